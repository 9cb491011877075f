# make train : install what is missing, then the documented default run (SST-2, offline)
# make test  : install what is missing, then the test suite (CI runs exactly this)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup train test test-all bench clean

setup: $(STAMP)

# torch first, the CPU build: an unpinned resolve would pull a multi-GB CUDA build. pip finds it where its config
# points (this project's machines: a wheel on disk); elsewhere pass TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: setup
	$(PY) train.py experiment=sst2_minilm

# two workers, one thread each: most tests are Python-bound tiny-model runs and subprocess start-ups, and two
# processes with two OpenMP threads each on two cores spin against each other
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -q -n 2

# also the slow quality runs (minutes each)
test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/throughput.py

clean:
	rm -rf outputs/*/ .cache .pytest_cache
