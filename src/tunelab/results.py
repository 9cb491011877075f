"""Results of finished runs, and the one rule for which metric a run optimizes: `monitor(cfg)` is what
checkpoints and early stopping watch, what train.py returns to sweepers, and what reports and plots
rank by. `load_runs` reads a sweep's (or any folder's) finished runs back from disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from tunelab.errors import ConfigError
from tunelab.sweeps import RESULTS_FILE, override_key

SEED_KEYS = ("seed",)
PREDICTIONS_FILE = "predictions.jsonl"  # one record per test example, written by every test


def monitor(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(metric, "max" | "min"): `optimized_metric` when set, else val/<the task's monitor metric>."""
    from tunelab.tasks import get_task  # torch + torchmetrics: only once a config is at hand

    task = get_task(cfg["data"]["task"])
    name = cfg.get("optimized_metric") or f"val/{task.monitor}"
    if not name.startswith("val/"):
        # picking checkpoints or configs on test (or train) numbers would report an optimistic test score
        raise ConfigError(f"optimized_metric={name} is not a validation metric; use val/{name.split('/')[-1]}.")
    return name, task.metric_mode(name)


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
        """What identifies the config: the overrides without the seed."""
        return tuple(sorted(o for o in self.overrides if override_key(o) not in SEED_KEYS))


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
    for path in sorted(sweep_dir.rglob("metrics.json")):
        rel = path.parent.relative_to(sweep_dir)
        if any(part.startswith(".") or part == "wandb" for part in rel.parts):
            continue
        record = json.loads(path.read_text())
        row = rows.get(str(rel), {})
        run = Run(dir=path.parent, overrides=list(record.get("overrides", [])),
                  metrics={k: v for k, v in record.get("metrics", {}).items() if v is not None})
        run.seed = row.get("seed")
        run.optimizer = (row.get("choices") or {}).get("optimizer")
        run.lr = row.get("lr")
        _fill_from_hydra_files(run)
        runs.append(run)
    return runs


def load_predictions(run_dir: Path) -> list[dict]:
    """The run's per-example predictions (predictions.jsonl of a test or predict.py run), ordered by `index`;
    ConfigError (naming file:line for a broken line) when the file is missing or a record has no `index`.
    The one reader of the file tunelab.predictions writes."""
    from tunelab.data.readers import read_table  # the data package loads torch: only once asked for

    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise ConfigError(f"no {PREDICTIONS_FILE} in {run_dir}: test the run again (python eval.py "
                          f"ckpt_path=<its checkpoint>) or leave it out.")
    records, lines = read_table(path, "jsonl")
    for record, line in zip(records, lines):
        if not isinstance(record.get("index"), int):
            raise ConfigError(f"{path}:{line}: a prediction without an integer `index`; re-test the run.")
    return sorted(records, key=lambda r: r["index"])


def saved_config(run_dir: Path) -> DictConfig | None:
    """The config a job ran with (<run dir>/.hydra/config.yaml, unresolved), None when missing."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def _fill_from_hydra_files(run: Run) -> None:
    overrides = {override_key(o): _value(o) for o in run.overrides}
    hydra = run.dir / ".hydra" / "hydra.yaml"
    run.saved = saved_config(run.dir)
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


def runs_monitor(runs: list[Run], metric: str | None = None) -> tuple[str, str]:
    """(metric, mode) for ranking runs: `metric` (default: what the runs optimized, `monitor`) and its
    direction, from the first run whose saved config names its task."""
    for run in runs:
        if run.saved is not None and OmegaConf.select(run.saved, "data.task", throw_on_resolution_failure=False):
            name, mode = monitor(run.saved)
            if metric is None or metric == name:
                return name, mode
            from tunelab.tasks import get_task

            return metric, get_task(run.saved.data.task).metric_mode(metric)
    raise ValueError("the runs have no saved config (.hydra/config.yaml) naming their task; "
                     "pass the metric to rank by (--metric val/...) from a run dir with its .hydra folder.")


