"""The run dir and what lives in it: claiming it for one run, finding checkpoints (`ckpt_path=last`, the
newest checkpoint) and metrics.json."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from tunelab import run_layout as layout
from tunelab.checkpoints import is_adapter_dir, training_config
from tunelab.errors import ConfigError
from tunelab.sweeps import command_line_keys, is_multirun
from tunelab.tested_data import chooses_data

log = logging.getLogger(__name__)

# where a launcher puts a process's rank: Lightning's child ranks (LOCAL_RANK), torchrun (RANK), SLURM tasks
# (SLURM_PROCID: hydra/launcher=slurm starts one task per device, each running the job itself)
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "SLURM_PROCID")


def launched_rank() -> int:
    """This process's rank among a run's processes before any Trainer exists: 0 for the first (or only) one."""
    return max(int(os.environ.get(key) or 0) for key in RANK_VARIABLES)


@contextlib.contextmanager
def claimed_run_dir(cfg: DictConfig, ckpt_path: str | None) -> Iterator[None]:
    """claim_run_dir for the run, given back when it ends however it ends: what it wrote (metrics.json, checkpoints)
    keeps the dir from another run, and a run that wrote nothing (a user error in the data files, a diverged sweep
    job run again with ckpt_path=last) leaves it to the next command."""
    marker = claim_run_dir(cfg, ckpt_path)
    try:
        yield
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def claim_run_dir(cfg: DictConfig, ckpt_path: str | None) -> Path | None:
    """Never mix two runs in one dir: refuse a dir that already holds a run (unless overwrite=true or
    resuming from a checkpoint inside it) and take it with an exclusive marker file, so two runs
    started at the same instant cannot share it. The other ranks (launched_rank) use rank 0's dir. `ckpt_path`: the
    run's resolved checkpoint. Returns the marker this call created (None: it was there, or a child rank)."""
    if launched_rank() != 0:
        return None
    out = Path(cfg.paths.output_dir)
    resuming_here = bool(ckpt_path) and ckpt_path != "last" and out.resolve() in Path(ckpt_path).resolve().parents
    allowed = bool(cfg.get("overwrite")) or resuming_here
    used = ((out / layout.METRICS_FILE).exists() or (out / layout.PREDICTIONS_FILE).exists()  # predict.py's output
            or any((out / layout.CHECKPOINTS_DIR).glob("*.ckpt")))
    if used and not allowed:
        raise ConfigError(f"run dir {out} already holds a run; pass overwrite=true to replace it or choose another hydra.run.dir.")
    if used and not resuming_here:
        _remove_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ".tunelab_run"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        if not allowed:
            raise ConfigError(f"run dir {out} is taken by another run; choose another hydra.run.dir.") from None
        return None
    return marker


def _remove_previous_run(out: Path) -> None:
    for name in layout.RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.info("overwrite=true: removed the previous run's outputs from %s", out)


def newest_checkpoint(folder: Path, pattern: str = "*.ckpt") -> Path | None:
    """The most recently written checkpoint matching `pattern` under `folder`, None if there is none."""
    found = sorted(Path(folder).glob(pattern), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    return found[-1] if found else None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """ckpt_path=last picks the newest last.ckpt among this task's runs; an adapter dir is accepted."""
    path = cfg.get("ckpt_path")
    if path is None:
        return _requeued_own_checkpoint(cfg)
    if path == "last":
        if cfg.get("train") and is_multirun():
            # each job of a sweep resumes its own (the sweep run again with hydra.sweep.dir=<its dir>); a job
            # that never wrote one starts from scratch
            return _own_last_checkpoint(cfg)
        # training resumes its own task_name's newest; eval.py / predict.py (task_name eval / predict, which train
        # nothing) take the newest of the runs that trained for the data's task (another task's would be refused)
        task_dir = Path(cfg.paths.log_dir, cfg.task_name if cfg.get("train") else "*")
        # runs/<run>/checkpoints and multiruns/<sweep>/<job>/checkpoints
        found = sorted((c for levels in ("*/*", "*/*/*")
                        for c in task_dir.parent.glob(str(layout.last_checkpoint(f"{task_dir.name}/{levels}")))),
                       key=lambda c: c.stat().st_mtime, reverse=True)
        # without data= / experiment=, eval.py tests the newest run on its own data, of whatever task
        any_task = cfg.get("train") or not chooses_data(command_line_keys())
        fits = (c for c in found if any_task or _trained_task(c) in (None, cfg.data.task))
        newest = next(fits, None)
        if newest is None:
            of = "" if any_task or not found else f" of a {cfg.data.task} run"
            raise ConfigError(f"ckpt_path=last: no last.ckpt{of} under {task_dir}; pass a path.")
        return str(newest)
    if is_adapter_dir(path):  # <run dir>/adapter from peft.save_adapter
        return str(path)
    if Path(path).is_dir():
        raise ConfigError(f"ckpt_path={path} {_what_dir(Path(path))}")
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; pass the path of a .ckpt file (or ckpt_path=last).")
    return str(path)


def _trained_task(checkpoint: Path) -> str | None:
    """The data.task of the run that wrote `checkpoint` (None: no config beside it)."""
    trained = training_config(checkpoint)
    return None if trained is None else OmegaConf.select(trained, "data.task", default=None)


def _requeued_own_checkpoint(cfg: DictConfig) -> str | None:
    """A SLURM job requeued after pre-emption (SLURM_RESTART_COUNT) runs its command again in its own run dir: it
    goes on from the last.ckpt its stop signal wrote there, as ckpt_path=last would, instead of refusing the dir."""
    if not cfg.get("train") or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    own = _own_last_checkpoint(cfg)
    if own is not None:
        log.warning("requeued SLURM job: resuming from %s", own)
    return own


def _own_last_checkpoint(cfg: DictConfig) -> str | None:
    """This run dir's own last.ckpt, None before it has written one."""
    own = layout.last_checkpoint(cfg.paths.output_dir)
    return str(own) if own.is_file() else None


def _what_dir(folder: Path) -> str:
    """The rest of the one-line error for a directory given as ckpt_path, naming the file to pass."""
    if (folder / "config.json").is_file():
        return (f"is an exported model: predict with it (predict.py ckpt_path={folder}); to test or resume, "
                "pass a .ckpt from the run's checkpoints/.")
    run_dir = folder.parent if folder.name == layout.CHECKPOINTS_DIR else folder
    metrics = run_dir / layout.METRICS_FILE
    tested = json.loads(metrics.read_text()).get("best_checkpoint") if metrics.is_file() else None
    if tested and Path(tested).is_file():  # the one its test metrics are of
        return f"is a run directory; pass the checkpoint its run tested, ckpt_path={tested}"
    newest = newest_checkpoint(run_dir, f"{layout.CHECKPOINTS_DIR}/*.ckpt")
    if newest is not None:
        return f"is a run directory; pass one of its checkpoints, e.g. ckpt_path={newest}"
    return "is a directory; pass the path of a .ckpt file (or ckpt_path=last)."


def write_metrics(out: Path, metrics: dict[str, float], best_checkpoint: str | None, global_step: int,
                  overrides: list[str]) -> dict[str, Any]:
    """<run dir>/metrics.json (non-finite values as null), written atomically; returns the record."""
    record = {
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())},
        "best_checkpoint": best_checkpoint,
        "global_step": global_step,
        "overrides": overrides,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{layout.METRICS_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / layout.METRICS_FILE)  # a crash mid-write never leaves a half-written file
    log.info("metrics: %s", json.dumps(record["metrics"]))
    return record
