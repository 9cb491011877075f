"""Results of finished runs: `load_runs` reads a sweep's (or any folder's) finished runs back from disk, `group_runs`
groups them into configs, `unfinished_jobs` names the jobs that wrote no results, `runs_monitor` the metric they
are ranked by (tunelab.monitoring's rule)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from tunelab.checkpoints import tested_run_dir
from tunelab.errors import ConfigError
from tunelab.monitoring import callback_monitor, incomparable_losses
from tunelab.run_layout import (CONFIG_YAML, HYDRA_DIR, HYDRA_YAML, METRICS_FILE, OVERRIDES_YAML, RESULTS_FILE,
                                WANDB_DIR, hydra_file, is_loss_metric)
from tunelab.sweeps import job_name, override_key

SEED_KEYS = ("seed",)
# YAML 1.1 words OmegaConf reads as booleans; Hydra's override grammar only knows true / false
_YAML_BOOLS = {w: v for v, words in ((True, ("yes", "on")), (False, ("no", "off")))
               for word in words for w in (word, word.title(), word.upper())}


@dataclass
class Run:
    dir: Path
    overrides: list[str]
    metrics: dict[str, float]
    seed: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    saved: DictConfig | None = None  # the job's .hydra/config.yaml (None when missing)

    @property
    def config(self) -> tuple[str, ...]:
        """What identifies the config: the overrides without the seed, values spelled canonically."""
        return tuple(sorted(canonical_override(o) for o in self.overrides if override_key(o) not in SEED_KEYS))

    @property
    def objective(self) -> str:
        """What the run's */loss measures: the loss section of its saved config (the loss=... choice and
        its parameters: focal's gamma, label smoothing), else its loss overrides."""
        if self.saved is not None and "loss" in self.saved:
            return json.dumps(OmegaConf.to_container(self.saved.loss, resolve=False), sort_keys=True)
        return ",".join(o for o in self.config if override_key(o).split(".")[0] == "loss")


@functools.lru_cache(maxsize=4096)
def canonical_override(override: str) -> str:
    """`key=value` with a scalar value spelled one way, so one config typed two ways stays one config:
    numbers as numbers (optimizer.lr=2e-3, =0.002 and =0.0020 are optimizer.lr=0.002, as a multirun
    re-serialises them), booleans and null as YAML reads them (True, yes -> true); other values as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "=" not in override:
        return override
    try:
        parsed = OverridesParser.create().parse_override(override)
        value = parsed.value()
    except Exception:  # noqa: BLE001 - not Hydra's grammar: compared as typed
        return override
    value = _YAML_BOOLS.get(value, value) if isinstance(value, str) else value
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, (int, float)):
        number = float(value)
        text = str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
    else:
        return override
    return f"{parsed.get_key_element()}={text}"


@dataclass
class Group:
    """The runs of one config; `values` is what every statistic over seeds reads."""

    config: tuple[str, ...]
    runs: list[Run]
    label: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def by_seed(self) -> dict[Any, list[Run]]:
        """{seed (or run dir when unseeded): its runs}."""
        runs: dict[Any, list[Run]] = {}
        for r in self.runs:
            runs.setdefault(r.seed if r.seed is not None else str(r.dir), []).append(r)
        return runs

    def values(self, metric: str) -> dict[Any, float]:
        """{seed (or run dir when unseeded): value} of one metric. Runs that repeat a seed count once,
        with their mean: a repeated seed repeats the same initialisation and data order, not a new sample."""
        values = {seed: [r.metrics[metric] for r in runs if r.metrics.get(metric) is not None]
                  for seed, runs in self.by_seed().items()}
        return {seed: math.fsum(v) / len(v) for seed, v in values.items() if v}

    @property
    def n_seeds(self) -> int:
        """Distinct seeds (an unseeded run counts as one)."""
        return len(self.by_seed())


def group_runs(runs: list[Run]) -> list[Group]:
    """The runs grouped by config (overrides minus the seed), each group labelled."""
    by_config: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_config.setdefault(run.config, []).append(run)
    return label_groups([Group(config, members) for config, members in by_config.items()])


def label_groups(groups: list[Group]) -> list[Group]:
    """Label each config by the overrides that differ between the groups (the rest is their common part)."""
    for g, label in zip(groups, varying_overrides([list(g.config) for g in groups])):
        g.label = label or job_name(list(g.config)) or "(defaults)"
    return groups


def varying_overrides(override_lists: list[list[str]]) -> list[str]:
    """Per list, its overrides whose key is missing from or set differently in another list, comma-joined."""
    settings = [{override_key(o): o for o in overrides} for overrides in override_lists]
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    return [",".join(s[k] for k in varying if k in s) for s in settings]


def _value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


# ---- loading -----------------------------------------------------------------------------------
def load_runs(sweep_dir: Path) -> list[Run]:
    """Every finished job under the sweep dir (one with a metrics.json), joined with its line of
    the sweep table for the resolved seed / optimizer / lr (falls back to the job's .hydra files)."""
    sweep_dir = Path(sweep_dir)
    rows = {}
    table = sweep_dir / RESULTS_FILE
    if table.is_file():
        for line in table.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row.get("job_dir")] = row
    runs = []
    for path in sorted(sweep_dir.rglob(METRICS_FILE)):
        rel = path.parent.relative_to(sweep_dir)
        if any(part.startswith(".") or part == WANDB_DIR for part in rel.parts):
            continue
        record = json.loads(path.read_text())
        row = rows.get(str(rel), {})
        run = Run(dir=path.parent, overrides=list(record.get("overrides", [])),
                  metrics={k: v for k, v in record.get("metrics", {}).items() if v is not None})
        run.seed = row.get("seed")
        run.optimizer = (row.get("choices") or {}).get("optimizer")
        run.lr = row.get("lr")
        _fill_from_hydra_files(run, record.get("best_checkpoint"))
        runs.append(run)
    return runs


def unfinished_jobs(sweep_dir: Path) -> tuple[int, list[tuple[Path, list[str]]]]:
    """(how many job dirs the sweep has, [(job dir, its overrides)] of those without a metrics.json):
    a job dir is a numbered subdir holding .hydra/, as Hydra's multirun creates it before the job runs."""
    jobs = sorted((d for d in Path(sweep_dir).iterdir() if d.name.isdigit() and (d / HYDRA_DIR).is_dir()),
                  key=lambda d: int(d.name)) if Path(sweep_dir).is_dir() else []
    missing = []
    for job in jobs:
        if not (job / METRICS_FILE).is_file():
            path = hydra_file(job, OVERRIDES_YAML)
            overrides = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
            missing.append((job, [canonical_override(str(o)) for o in overrides or []]))
    return len(jobs), missing


def saved_config(run_dir: Path) -> DictConfig | None:
    """The config a job ran with (<run dir>/.hydra/config.yaml, unresolved), None when missing."""
    path = hydra_file(run_dir, CONFIG_YAML)
    return OmegaConf.load(path) if path.is_file() else None


def _fill_from_hydra_files(run: Run, checkpoint: str | None) -> None:
    run.saved = saved_config(run.dir)
    if run.saved is not None and run.saved.get("ckpt_path") == "last" and checkpoint:
        run.saved.ckpt_path = checkpoint  # the file "last" stood for: metrics.json names it
    source = _tested_run(run) or run.dir
    overrides = {override_key(o): _value(o) for o in run.overrides}
    hydra = hydra_file(source, HYDRA_YAML)
    cfg = run.saved if run.saved is not None else OmegaConf.create()
    if run.seed is None:
        seed = overrides.get("seed", OmegaConf.select(cfg, "seed", throw_on_resolution_failure=False))
        run.seed = int(seed) if seed not in (None, "") else None
    if run.optimizer is None:
        choice = None
        if hydra.is_file():
            choice = OmegaConf.select(OmegaConf.load(hydra), "hydra.runtime.choices.optimizer",
                                      throw_on_resolution_failure=False)
        run.optimizer = choice or overrides.get("optimizer")
    if run.lr is None:
        lr = overrides.get("optimizer.lr")
        if lr is None:
            try:  # interpolations that need Hydra at run time cannot be resolved here
                lr = OmegaConf.select(cfg, "optimizer.lr", throw_on_resolution_failure=True)
            except Exception:  # noqa: BLE001
                lr = None
        run.lr = float(lr) if lr is not None else None


def _tested_run(run: Run) -> Path | None:
    """An eval.py run of a checkpoint stands for the model it tested: its config is the training run's
    overrides with the eval's own on top (the test data; ckpt_path dropped), its seed, optimizer, lr, loss
    and monitored metric the training run's, so checkpoints of one recipe pair by their training seeds.
    Returns the training run's dir (None for a training run, or a checkpoint without its run's .hydra)."""
    trained_dir = tested_run_dir(run.saved) if run.saved is not None else None
    hydra_dir = trained_dir / HYDRA_DIR if trained_dir is not None else None
    if hydra_dir is None or not (hydra_dir / OVERRIDES_YAML).is_file() or not (hydra_dir / CONFIG_YAML).is_file():
        return None
    own = {override_key(o): o for o in run.overrides if override_key(o) not in ("ckpt_path", *SEED_KEYS)}
    trained = [o for o in OmegaConf.load(hydra_dir / OVERRIDES_YAML) if override_key(o) not in {*own, "ckpt_path"}]
    run.overrides = [*trained, *own.values()]
    run.saved = OmegaConf.load(hydra_dir / CONFIG_YAML)
    run.seed = run.optimizer = run.lr = None  # eval.py's own seed (42) is not the model's
    return trained_dir


def runs_monitor(runs: list[Run], metric: str | None = None) -> tuple[str, str]:
    """(metric, mode) for ranking runs: `metric` (default: what the runs optimized, `monitor`) and its
    direction, from the first run whose saved config names its task."""
    for run in runs:
        if run.saved is not None and OmegaConf.select(run.saved, "data.task", throw_on_resolution_failure=False):
            return callback_monitor(run.saved, metric or "auto", "auto")
    raise ConfigError("the runs have no saved config (.hydra/config.yaml) naming their task; "
                     "pass the metric to rank by (--metric val/...) from a run dir with its .hydra folder.")


def runs_task(runs: list[Run]) -> str | None:
    """The task of the first run whose saved config names it."""
    for run in runs:
        task = OmegaConf.select(run.saved, "data.task", throw_on_resolution_failure=False) if run.saved else None
        if task:
            return str(task)
    return None


def check_comparable_losses(groups: list[Group], metric: str) -> None:
    """Refuse ranking or testing on */loss across configs that train different losses: each loss scores
    in its own units (square error vs cross-entropy), so the numbers say nothing about which is better."""
    if not is_loss_metric(metric) or len({r.objective for g in groups for r in g.runs}) < 2:
        return
    losses = sorted({o for g in groups for o in g.config if override_key(o).split(".")[0] == "loss"})
    raise ConfigError(incomparable_losses(metric, losses, runs_task([r for g in groups for r in g.runs]), "--metric "))
