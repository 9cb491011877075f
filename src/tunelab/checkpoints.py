"""ckpt_path= files: read the checkpoint's header and check it fits this run's data before Lightning
loads it, so a wrong file is one line naming what was expected instead of a KeyError deep in torch."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tunelab.errors import ConfigError

EXPECTED = "pass a .ckpt file written by train.py (or ckpt_path=last)"


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


def check_checkpoint(path: str | Path | None, cfg: DictConfig) -> dict[str, Any] | None:
    """A ckpt_path file must be a tunelab checkpoint of this run's task and (when data.label_names says
    it) label set; None and adapter directories (peft.save_adapter) are not checkpoint files: skipped. Returns
    the checkpoint's hyper-parameters (None when skipped)."""
    if path is None or Path(path).is_dir():
        return
    hparams = load_checkpoint_header(path).get("hyper_parameters") or {}
    task, data = hparams.get("task"), cfg.data
    if task is None:
        raise ConfigError(f"ckpt_path={path} holds no tunelab hyper-parameters (task, label names); {EXPECTED}.")
    if task != data.task:
        raise ConfigError(f"ckpt_path={path} is a {task} checkpoint but data={data.name} is a {data.task} task; "
                          f"pass a checkpoint trained for {data.task}, or the data it was trained on.")
    check_label_set(path, hparams.get("label_names") or (), data, "checkpoint")
    return hparams


def check_label_set(path: str | Path, trained: Any, data: DictConfig, kind: str) -> None:
    """The label names a model was trained on must be the data config's, when data.label_names says them
    (a .ckpt's hyper-parameters, an exported model's id2label): `kind` names the file in the fix."""
    trained = [str(n) for n in trained]
    expected = [str(n) for n in data.get("label_names") or ()]
    if expected and trained != expected:
        raise ConfigError(f"ckpt_path={path} was trained on the labels {trained} but data={data.name} has {expected}; "
                          f"pass a {kind} of this label set, or set data.label_names to the {kind}'s.")
