"""The time-to-accuracy experiments (conf/experiment/*_gpu.yaml) hold the fast GPU settings they
document, and run end to end on CPU at tiny sizes, as does their transformers.Trainer anchor."""

from __future__ import annotations

import json

import pytest

from bench.meters import STARTUP_TIMER
from bench.time_to_accuracy import SMOKE as CPU_TINY  # tiny model, 64 rows, fp32 on CPU
from conftest import FIXTURES, compose_cfg, run_script

# the eager kernels replayed as CUDA graphs, one static graph per length bucket (the backend's only mode)
CUDAGRAPHS_BACKEND = ["model.compile_backend=cudagraphs", "model.compile_dynamic=false"]



@pytest.mark.parametrize("experiment", ["sst2_minilm_gpu", "stsb_minilm_gpu"])
def test_gpu_experiment_settings(tmp_path, experiment: str) -> None:
    cfg = compose_cfg(tmp_path, f"experiment={experiment}", fast=False)
    assert cfg.model.name_or_path.endswith("model") and not cfg.model.from_scratch  # the shipped MiniLM
    assert cfg.data.train_limit is None  # all of the training file
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    assert cfg.data.group_by_length and cfg.data.pad_to_multiple_of == 16 and cfg.data.drop_last
    assert cfg.model.compile and cfg.model.compile_dynamic and cfg.model.compile_mode == "reduce-overhead"
    assert cfg.trainer.gradient_clip_val == 1.0  # transformers.Trainer's max_grad_norm: the anchor's settings


@pytest.mark.parametrize("experiment,metric,compile_opts", [
    # the experiment's compile settings traced by aot_eager (inductor builds take minutes on CPU)
    ("sst2_minilm_gpu", "test/acc", ["model.compile_backend=aot_eager"]),
    # the cudagraphs backend (bench/time_to_accuracy.py's *_graphs runs): on CPU it runs the traced graph
    ("sst2_minilm_gpu", "test/acc", CUDAGRAPHS_BACKEND),
    ("stsb_minilm_gpu", "test/spearman", ["model.compile=false"]),
])
def test_gpu_experiment_runs_on_cpu_at_tiny_size(run_cfg, experiment: str, metric: str,
                                                compile_opts: list[str]) -> None:
    import torch

    metrics, run_dir = run_cfg(f"experiment={experiment}", *CPU_TINY, *compile_opts, "trainer.max_epochs=1")
    assert metric in metrics and json.loads((run_dir / "metrics.json").read_text())["global_step"] > 0
    # the best checkpoint (what test loads) holds the weights only: no AdamW state to write, a third the bytes
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert saved["state_dict"] and "optimizer_states" not in saved


def test_cuda_graph_steps_are_marked_in_training_only(run_cfg, monkeypatch) -> None:
    # a step mark invalidates the previous replay's outputs: eager evaluation (compile_eval=false) has
    # none to protect and marks nothing
    import torch

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    _, run_dir = run_cfg("experiment=sst2_minilm_gpu", *CPU_TINY, *CUDAGRAPHS_BACKEND, "trainer.max_epochs=2")
    steps = json.loads((run_dir / "metrics.json").read_text())["global_step"]
    assert steps > 1 and len(marks) == steps  # the sanity check, validation and test ran unmarked


def test_an_error_in_a_cuda_graph_step_is_reported_as_itself(run_cfg, monkeypatch) -> None:
    """On the H200 a failing graph step was reported as "accessing tensor output of CUDAGraphs that has
    been overwritten": Lightning's teardown moved the module to the CPU with the previous step's gradients,
    which the failing step's mark had invalidated. The gradients are dropped before teardown."""
    import torch
    from lightning.pytorch.strategies import SingleDeviceStrategy

    marks, grads_at_teardown = [], []

    def mark() -> None:
        marks.append(1)
        if len(marks) == 2:  # the second training step fails after its mark, before zero_grad
            raise RuntimeError("the graph step failed")

    def teardown(self) -> None:
        grads_at_teardown.extend(p for p in self.lightning_module.parameters() if p.grad is not None)

    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", mark)
    monkeypatch.setattr(SingleDeviceStrategy, "teardown", teardown)
    with pytest.raises(RuntimeError, match="the graph step failed"):
        run_cfg("experiment=sst2_minilm_gpu", *CPU_TINY, *CUDAGRAPHS_BACKEND, "data.batch_size=16",
                "trainer.max_epochs=1")
    assert grads_at_teardown == []


def test_trainer_anchor_runs_the_experiment_with_transformers_trainer(tmp_path, cache_dir) -> None:
    out = tmp_path / "anchor.json"
    proc = run_script("bench/hf_trainer_anchor.py", "experiment=stsb_minilm_gpu", *CPU_TINY, f"paths.data_dir={FIXTURES}",
                      f"paths.cache_dir={cache_dir}", "trainer.max_epochs=2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # 64 rows, batch 16, 2 epochs: the experiment's schedule, run by Trainer
    assert result["anchor"] == "transformers.Trainer" and result["optimizer_steps"] == 8
    assert -1 <= result["test/spearman"] <= 1 and result["test_metric_s"] > result["train_s"] > 0


def test_compiled_run_evaluates_eager_compiling_its_training_graphs_only(run_cfg) -> None:
    # model.compile_eval=false (the default): validation and test run eager under
    # torch.compiler.set_stance, so no second set of graphs is compiled for eval mode; same metrics
    import torch
    from torch._dynamo.utils import counters

    def run(*extra: str) -> tuple[int, dict]:
        torch._dynamo.reset()
        counters.clear()
        metrics, _ = run_cfg("experiment=sst2_minilm_gpu", *CPU_TINY, "model.compile_backend=aot_eager",
                             "trainer.max_epochs=1", *extra)
        return counters["stats"]["unique_graphs"], metrics

    eager_eval, eager_metrics = run()
    compiled_eval, compiled_metrics = run("model.compile_eval=true")
    assert 0 < eager_eval < compiled_eval
    for key in ("val/loss", "test/loss", "test/acc"):
        assert eager_metrics[key] == pytest.approx(compiled_metrics[key], abs=1e-5)


def test_a_sweeps_later_jobs_reuse_the_first_jobs_compiled_graphs(tmp_path, cache_dir) -> None:
    # `train.py -m` runs its jobs in one process: a new model per job, but dynamo inlines nn modules, so its
    # graphs take the parameters as inputs and serve every job of the same shapes; only the first job
    # compiles (bench/device_gpu.sh's recipe sweep relies on it)
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", "experiment=sst2_minilm_gpu", *CPU_TINY, "model.compile_backend=aot_eager",
                      "seed=1,2,3", "trainer.max_epochs=1", "test=false", "export=false", "logger=none",
                      f"paths.data_dir={FIXTURES}", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}",
                      STARTUP_TIMER)
    assert proc.returncode == 0, proc.stderr[-2000:]
    graphs = [json.loads((sweep / str(job) / "startup.json").read_text())["compile"]["graphs"] for job in range(3)]
    assert graphs[0] > 0 and graphs[1:] == [0, 0]  # each job's own counts: jobs 2 and 3 built none
