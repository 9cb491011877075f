"""Entry point shared by train.py and eval.py: run the pipeline, turn user errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra

from omegaconf import DictConfig

from tunelab.errors import ConfigError, TrainingError
from tunelab.pipeline import run
from tunelab.tasks import get_task

log = logging.getLogger("tunelab")


def launch(config_name: str, project_root: Path) -> None:
    """What train.py / eval.py run: offline defaults, the typo preflight, then the Hydra app on
    conf/<config_name>.yaml. The app returns the optimized metric for sweepers (optuna)."""
    os.environ.setdefault("PROJECT_ROOT", str(project_root))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preflight(config_name, sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=str(project_root / "conf"), config_name=config_name)
    def app(cfg: DictConfig) -> float | None:
        return main_entry(cfg)

    app()


def main_entry(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except (ConfigError, TrainingError) as err:
        # one clear line instead of a traceback: the message names the fix
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 3)
    name = cfg.get("optimized_metric") or f"val/{get_task(cfg.data.task).monitor}"
    return metrics.get(name)


def preflight(config_name: str, argv: list[str]) -> None:
    """Compose the command line's overrides once before Hydra does, to turn a typo into one line
    with a suggestion (Hydra's own message names the problem but not the fix). Sweeps (-m) are
    left to Hydra, which composes each job itself."""
    if any(a in {"-m", "--multirun"} or a.startswith("--") for a in argv):
        return
    overrides = [a for a in argv if "=" in a and not a.lstrip("+~").startswith("hydra")]
    from hydra.errors import ConfigCompositionException, MissingConfigException

    from tunelab.config import compose_config

    try:
        compose_config(overrides, ".", config_name=config_name)
    except (ConfigCompositionException, MissingConfigException) as err:
        print(f"error: {explain_override_error(err, config_name)}", file=sys.stderr)
        sys.exit(2)


def explain_override_error(err: Exception, config_name: str) -> str:
    """One line naming the fix for an unknown key or an unknown group option."""
    import difflib
    import re

    from omegaconf import OmegaConf

    from tunelab.config import CONF_DIR

    text = str(err)
    key = re.search(r"Could not override '([^']+)'", text)
    if key:
        dotted = key.group(1)
        parent, _, leaf = dotted.rpartition(".")
        try:
            from tunelab.config import compose_config

            cfg = compose_config([], ".", config_name=config_name)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            close = difflib.get_close_matches(leaf, list(node.keys()), n=1) if node is not None else []
        except Exception:  # noqa: BLE001 - the suggestion is a nicety
            close = []
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
        return f"unknown config key '{dotted}': {hint}(to add a new key write +{dotted}=...)"
    ambiguous = re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)
    if ambiguous:  # Hydra's text lists three readings; the sweep is what researchers mean
        key, values = ambiguous.groups()
        return (f"{key}={values} lists several values: add -m to sweep over them "
                f"(python train.py -m ... {key}={values}), or write {key}=[{values}] for a list.")
    group = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if group:
        name, option = group.groups()
        options = sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))
        return f"{name}={option} is not an option; choose one of: {', '.join(options)}"
    return text.splitlines()[0]
