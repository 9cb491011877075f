"""Resuming continues the run a checkpoint holds: what the resumed run must share with it (model, data, loss,
optimizer, scheduler, adapter, seed), checked before anything loads beyond the data config, and what may change."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from tunelab import run_layout as layout
from tunelab.checkpoints import hydra_dir_of, resolved_model_paths, training_config
from tunelab.data.datamodule import FILE_KEYS, LOADER_KEYS
from tunelab.data.language_modeling import trained_from
from tunelab.errors import ConfigError
from tunelab.model import RUNTIME_KEYS
from tunelab.optim import KERNEL_KEYS
from tunelab.peft_adapters import EXPORT_KEYS
from tunelab.sweeps import command_line_overrides

log = logging.getLogger(__name__)


# what a resumed run must share with the run its checkpoint comes from: its model, data and the settings below; the
# trainer's limits may change, and so may what does not change what trains (each declared by its owner)
RESUMED_SETTINGS = ("model", "peft", "loss", "optimizer", "scheduler")
MAY_CHANGE = {"model": RUNTIME_KEYS, "peft": EXPORT_KEYS, "optimizer": KERNEL_KEYS, "data": LOADER_KEYS}
# what sets a run's number of optimizer steps, which the scheduler spans
RUN_LENGTH = ("trainer.max_steps", "trainer.max_epochs", "trainer.limit_train_batches",
              "trainer.accumulate_grad_batches", "data.batch_size", "data.train_limit")


def check_resume(path: str | Path, trained: Mapping[str, Any], now: Mapping[str, Any], cfg: DictConfig) -> None:
    """Resuming continues the checkpoint's run, with its optimizer and scheduler state: a command line that
    names another model, data, loss, optimizer, scheduler, adapter or seed would record the continued run
    under settings it did not train with (and sweeps and comparisons would pair it so), or fail to load the
    weights. Another length (training longer after a max_steps stop) is allowed, with a warning: the schedule
    is rebuilt for it."""
    trained_cfg = training_config(path)
    for key, before, after in _resume_differences(trained, now, trained_cfg, cfg):
        if before != after:
            run_overrides = _run_overrides(path)
            # ckpt_path=last may have found another run of the same task_name than the one meant
            chosen = (f" (ckpt_path=last took the newest run of task_name={cfg.get('task_name')}; pass the path of "
                      "the checkpoint to resume)" if "ckpt_path=last" in command_line_overrides() else "")
            raise ConfigError(f"ckpt_path={path} was trained with {key}={before}, this run says {after}: resuming "
                              "continues that run, so pass its settings (its .hydra/overrides.yaml"
                              f"{': ' + run_overrides if run_overrides else ''}), or train from scratch without "
                              f"ckpt_path{chosen}.")
    if trained_cfg is None or not now.get("scheduler"):
        return
    lengths = {key: (OmegaConf.select(trained_cfg, key, default=None), OmegaConf.select(cfg, key, default=None))
               for key in RUN_LENGTH}
    changed = [f"{key}={then} -> {now_}" for key, (then, now_) in lengths.items() if then != now_]
    if changed:
        log.warning("ckpt_path=%s was trained for another length (%s): the learning-rate schedule is rebuilt for this "
                    "run's steps from where the checkpoint left off, so the result differs from a run trained to this "
                    "length from the start", path, ", ".join(changed))


def _resume_differences(trained: Mapping[str, Any], now: Mapping[str, Any], trained_cfg: DictConfig | None,
                        cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, trained, now) for every setting a resumed run must share: the module's hyper-parameters and the data
    config, both resolved (files as absolute paths), and the seed. A key only one side has is not compared: one a
    newer version added, with its default, to what the checkpoint's run could not set."""
    model_now = resolved_model_paths(now.get("model") or {})
    model_then = dict(trained.get("model") or {})
    if trained_from(model_now.get("tokenizer"), model_then.get("tokenizer")):  # the checkpoint names its trained dir
        model_then["tokenizer"] = model_now["tokenizer"]
    groups = {"model": (model_then, model_now), **{g: (trained.get(g) or {}, now.get(g) or {})
                                                   for g in RESUMED_SETTINGS[1:]}}
    if trained_cfg is not None:
        groups["data"] = (_data_files(trained_cfg), _data_files(cfg))
    differences = []
    for group, (before, after) in groups.items():
        keys = (set(before) & set(after)) - MAY_CHANGE.get(group, set())
        if group == "data":
            keys -= {k.split(".")[1] for k in RUN_LENGTH if k.startswith("data.")}
        differences += [(f"{group}.{key}", before[key], after[key]) for key in sorted(keys)]
    if trained_cfg is not None:
        differences.append(("seed", trained_cfg.get("seed"), cfg.seed))
    return differences


def _data_files(cfg: DictConfig) -> dict[str, Any]:
    """A run's data config resolved in this process, its files as absolute paths (paths.data_dir spelled relative or
    absolute names the same files); as written where it does not resolve here."""
    try:
        data = OmegaConf.to_container(cfg.data, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only the run's own Hydra resolves
        return OmegaConf.to_container(cfg.data, resolve=False)
    return {k: str(Path(v).resolve()) if k in FILE_KEYS and isinstance(v, str) and Path(v).exists() else v
            for k, v in data.items()}


def _run_overrides(path: str | Path) -> str:
    """The command-line overrides of the run that wrote `path` (but its ckpt_path), as one string ('' without)."""
    hydra_dir = hydra_dir_of(path)
    file = hydra_dir / layout.OVERRIDES_YAML if hydra_dir is not None else None
    if file is None or not file.is_file():
        return ""
    return " ".join(str(o) for o in OmegaConf.load(file) if not str(o).lstrip("+~").startswith("ckpt_path="))
