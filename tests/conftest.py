"""Shared test helpers: compose the real Hydra config with test-sized overrides, run the pipeline."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from omegaconf import DictConfig, open_dict  # noqa: E402

import tunelab  # noqa: E402,F401  (registers resolvers)
from tunelab.config import compose_config  # noqa: E402

# small, quiet and fast: conf/debug/quick.yaml (tiny random model, CPU, CSV logs, no progress bar) on the
# fixture rows
FAST = ["debug=quick", f"paths.data_dir={FIXTURES}"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def compose_cfg(out_dir: Path, *overrides: str, config_name: str = "train", fast: bool = True, cache: Path | None = None) -> DictConfig:
    """The config train.py would see for these overrides, writing into out_dir."""
    base = list(FAST) if fast else []
    if cache is not None:
        base.append(f"paths.cache_dir={cache}")
    cfg = compose_config([*base, *overrides], out_dir, config_name=config_name)
    with open_dict(cfg):
        cfg.paths.log_dir = str(out_dir / "outputs")
    return cfg


@pytest.fixture
def run_cfg(tmp_path, cache_dir):
    """run_cfg(*overrides) -> (metrics, run dir) of a full pipeline run in a fresh temp dir."""
    from tunelab.pipeline import run

    counter = iter(range(1000))

    def _run(*overrides: str, fast: bool = True):
        out = tmp_path / f"run{next(counter)}"
        cfg = compose_cfg(out, *overrides, fast=fast, cache=cache_dir)
        return run(cfg), out

    return _run


def run_script(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None,
               stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """Run train.py / eval.py as a user would, in a subprocess (stdout: captured, or an open file)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
        env=full_env,
    )


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def wandb_records(run_file: Path):
    """The protobuf records of an offline .wandb file: a LevelDB-style log of records in 32 KiB blocks
    after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    pos, payload = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last fragment
            record = pb.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def save_tiny_model(path: Path, config) -> Path:
    """A tiny random model of `config`'s architecture (a user's own model=hf) on disk with the MiniLM tokenizer."""
    import torch
    import transformers

    from tunelab.resolvers import minilm_path

    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pretrained_tiny_bert(tmp_path_factory) -> Path:
    """A tiny 'pretrained' BERT on disk with the MiniLM tokenizer: what an adapter is loaded onto."""
    import torch
    import transformers

    from tunelab.resolvers import minilm_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
