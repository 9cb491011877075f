"""Sweep bookkeeping done inside each job: the sweep-level results table and the W&B run identity
(group = sweep, name = overrides, tags = config choices)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab.checkpoints import hydra_dir_of, tested_run_dir, trained_settings
from tunelab.redaction import redact_argument
from tunelab.run_layout import HYDRA_DIR, HYDRA_YAML, MULTIRUN_YAML, OVERRIDES_YAML, RESULTS_FILE, WANDB_DIR


# the config-group choices that identify a run (W&B tags, results table)
CHOICE_GROUPS = ("data", "loss", "optimizer", "scheduler", "model", "peft")
TAG_GROUPS = ("data", "loss", "optimizer")
# overrides that say where/how a job runs, not what it trains: left out of W&B run names
_PLUMBING = ("paths.", "hydra.", "logger", "callbacks", "trainer.accelerator", "trainer.enable_", "experiment",
             "hparams_search")


def override_key(override: str) -> str:
    """The key of a command-line override: `+optimizer.lr=1e-4` -> `optimizer.lr`."""
    return override.lstrip("+~").split("=", 1)[0]


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def launcher_target() -> str:
    """The _target_ of the Hydra launcher running this job ("" outside Hydra)."""
    return str(HydraConfig.get().launcher.get("_target_", "")) if HydraConfig.initialized() else ""


def sweep_dir() -> Path | None:
    """The sweep's root dir when this process runs a multirun job, else None."""
    return Path(HydraConfig.get().sweep.dir) if is_multirun() else None


def command_line_overrides() -> list[str]:
    """This run's (or sweep job's) overrides as Hydra received them; [] outside Hydra."""
    if not HydraConfig.initialized():
        return []
    # as typed: an override's value may hold an interpolation (optimizer.lr='${..lr_scale}'), not to resolve here
    return [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]


def command_line_keys() -> set[str]:
    """The keys this run's command line sets (`optimizer.lr` of `+optimizer.lr=1e-4`)."""
    return {override_key(o) for o in command_line_overrides()}


def job_name(overrides: list[str], swept: set[str] | None = None) -> str:
    """A run name from this job's overrides: the swept ones when known (`optimizer=sgd,seed=1`),
    else all but the plumbing ones."""
    keys = [override_key(o) for o in overrides]
    kept = [o for o, k in zip(overrides, keys) if k in swept] if swept else []
    return ",".join(kept or [o for o, k in zip(overrides, keys) if not k.startswith(_PLUMBING)])


def job_label(num: int, overrides: list[str], swept: set[str], jobs: int | None = None) -> str:
    """A sweep job as error lines name it: `job 1 (optimizer.lr=1e+30)`, or `job 1 of 8 (...)`, by its swept
    overrides (else all)."""
    kept = [o for o in overrides if override_key(o) in swept]
    return f"job {num}{f' of {jobs}' if jobs else ''} ({' '.join(kept or overrides)})"


def sweep_arguments(hydra_cfg: DictConfig) -> list[str]:
    """A multirun's overrides as its sweeper reads them: the sweeper's params, then the command line's."""
    params = [f"{key}={value}" for key, value in (hydra_cfg.sweeper.get("params") or {}).items()]
    return [*params, *(hydra_cfg.overrides.get("task") or [])]


def swept_keys_of(hydra_cfg: DictConfig) -> set[str]:
    """The keys a multirun varies: those of its sweep overrides (a,b / range() / choice() / interval())."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(sweep_arguments(hydra_cfg))
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


# a grid sweep's swept keys while sweep_checks checks its jobs, before the launcher saves multirun.yaml
_checked_sweep: set[str] | None = None


@contextlib.contextmanager
def checking_jobs_of(swept: set[str]) -> Iterator[None]:
    """While a sweep's jobs are checked before it starts: swept_keys() answers `swept`."""
    global _checked_sweep
    _checked_sweep = set(swept)
    try:
        yield
    finally:
        _checked_sweep = None


def job_keys() -> set[str]:
    """The keys this run's command line sets for it. In a sweep, a fixed key of a group whose option the sweep varies
    (peft.save_adapter=true beside peft=none,lora) is meant for the jobs whose option has it, not for every job."""
    given = command_line_keys()
    if not is_multirun():
        return given
    swept = swept_keys()
    return {k for k in given if k in swept or k.split(".")[0] not in swept}


def varies(group: str) -> bool:
    """Whether this job's sweep varies the option of a config group (peft=none,lora)."""
    return is_multirun() and group in swept_keys()


def swept_keys() -> set[str]:
    """The keys this job's sweep varies, from the sweep's config the launcher saved to <sweep dir>/multirun.yaml
    (a job's own Hydra config holds its values, not the sweep's)."""
    if _checked_sweep is not None:
        return set(_checked_sweep)
    saved = Path(HydraConfig.get().sweep.dir) / MULTIRUN_YAML
    if not saved.is_file():
        return set(HydraConfig.get().sweeper.get("params") or {})
    return set(_saved_swept_keys(str(saved.resolve()), saved.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _saved_swept_keys(file: str, mtime_ns: int) -> frozenset[str]:
    """One parse per sweep (~40 ms: the YAML and Hydra's override grammar); a job's checks ask several times."""
    return frozenset(swept_keys_of(OmegaConf.load(file).hydra))


def choices(cfg: DictConfig | None = None) -> dict[str, str]:
    """The run's config-group choices (W&B flat keys and tags, the sweep table). An eval.py / predict.py run
    of a checkpoint (`cfg` given) takes its training run's, with its own data choice: the data it tested on."""
    if not HydraConfig.initialized():
        return {}
    picked = _picked(HydraConfig.get().runtime.choices)
    trained = trained_run_choices(cfg) if cfg is not None else {}
    return {**trained, **{g: v for g, v in picked.items() if g == "data"}} if trained else picked


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a run is compared by (the sweep table, TensorBoard's HPARAMS): its group choices, seed and learning
    rate; an eval.py / predict.py run of a checkpoint, its training run's (its data choice its own)."""
    trained = trained_settings(cfg)
    optimizer = trained.get("optimizer") or cfg.get("optimizer") or {}
    return {"choices": choices(cfg), "seed": trained.get("seed", cfg.get("seed")), "lr": optimizer.get("lr")}


def trained_run_choices(cfg: DictConfig) -> dict[str, str]:
    """The config-group choices of the run that trained cfg.ckpt_path (its .hydra/hydra.yaml); {} for a training
    run or a checkpoint without its run dir."""
    trained_dir = tested_run_dir(cfg)
    hydra_dir = trained_dir / HYDRA_DIR if trained_dir is not None else None
    if hydra_dir is None or not (hydra_dir / HYDRA_YAML).is_file():
        return {}
    return _picked(OmegaConf.select(OmegaConf.load(hydra_dir / HYDRA_YAML), "hydra.runtime.choices") or {})


def _picked(runtime: Any) -> dict[str, str]:
    return {g: str(runtime[g]) for g in CHOICE_GROUPS if runtime.get(g) is not None}


def with_wandb_identity(logger_group: DictConfig | None, cfg: DictConfig | None = None) -> DictConfig | None:
    """A copy of the logger group whose W&B entry carries tags for the data/loss/optimizer choices and a name:
    in a sweep, the job's swept overrides, with group = the sweep dir name (unless logger.wandb.group is set);
    a single run, its overrides (unless logger.wandb.name is given). The config itself is left as it is."""
    if not logger_group or "wandb" not in logger_group or not HydraConfig.initialized():
        return logger_group
    group = logger_group.copy()
    entry = group.wandb
    picked = choices(cfg)
    with open_dict(entry):
        entry.tags = [*(entry.get("tags") or []), *(f"{g}:{picked[g]}" for g in TAG_GROUPS if g in picked)]
        overrides = [redact_argument(o) for o in command_line_overrides()]  # a name is sent as is
        resumed = resumed_wandb_run(cfg)
        if resumed is not None and entry.get("id") is None:
            # the checkpoint's run goes on: the same W&B run (Lightning's WandbLogger resumes an id with
            # resume="allow") under the name it was given, so the dashboard shows one run with one history
            entry.id, named_by = resumed
            overrides = [redact_argument(o) for o in named_by if override_key(o) != "ckpt_path"]
        if is_multirun():
            entry.group = wandb_group(entry, Path(HydraConfig.get().sweep.dir))
            entry.name = job_name(overrides, swept_keys()) or entry.get("name")
        elif not any(override_key(o) == "logger.wandb.name" for o in overrides):
            entry.name = job_name(overrides) or entry.get("name")  # a single run by its overrides, not task_name
    return group


def resumed_wandb_run(cfg: DictConfig | None) -> tuple[str, list[str]] | None:
    """(W&B run id, the overrides its name came from) of the run a training run resumes (cfg.ckpt_path, resolved):
    the newest W&B run in the checkpoint's run dir (<run dir>/wandb/[offline-]run-<time>-<id>), and that run's
    .hydra/overrides.yaml. None when not resuming, or that run had no W&B logger."""
    if cfg is None or not cfg.get("train", True) or not cfg.get("ckpt_path"):
        return None
    hydra_dir = hydra_dir_of(str(cfg.ckpt_path))
    runs = [d for d in hydra_dir.parent.glob(f"{WANDB_DIR}/*run-*-*") if d.is_dir()] if hydra_dir is not None else []
    if not runs or not (hydra_dir / OVERRIDES_YAML).is_file():
        return None
    newest = max(runs, key=lambda d: d.name.rsplit("run-", 1)[-1])  # by the <time>-<id> part
    return newest.name.rsplit("-", 1)[-1], [str(o) for o in OmegaConf.load(hydra_dir / OVERRIDES_YAML)]


def wandb_group(entry: DictConfig, sweep: Path) -> str:
    """The W&B group of a sweep's runs: logger.wandb.group, else the sweep dir's name."""
    return OmegaConf.select(entry, "group", default=None) or Path(sweep).name


def append_result(directory: Path, record: dict[str, Any]) -> Path:
    """Append one JSON line to <directory>/results.jsonl. Jobs of a parallel launcher (submitit,
    joblib) finish concurrently, possibly on a network file system where O_APPEND alone is not
    atomic: the line goes out in one write under an exclusive lock."""
    path = Path(directory) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)  # also releases the lock
    return path


def record_job(cfg: DictConfig, record: dict[str, Any]) -> Path | None:
    """In a multirun job: add this job's final metrics to the sweep table (<sweep dir>/results.jsonl)."""
    root = sweep_dir()
    if root is None:
        return None
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        job_dir = str(output_dir.resolve().relative_to(root.resolve()))
    except ValueError:
        job_dir = str(output_dir)
    row = {
        "job": hydra_cfg.job.get("num"),
        "job_dir": job_dir,
        "overrides": record.get("overrides", []),
        **run_identity(cfg),
        "metrics": record["metrics"],
        "global_step": record.get("global_step"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return append_result(root, row)
