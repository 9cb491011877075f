"""Entry point shared by train.py and eval.py: run the pipeline, turn user errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra

from omegaconf import DictConfig

from tunelab import schema
from tunelab.errors import ConfigError, TrainingError

log = logging.getLogger("tunelab")


def launch(config_name: str, project_root: Path) -> None:
    """What train.py / eval.py run: offline defaults, then the Hydra app on conf/<config_name>.yaml.
    The app returns the optimized metric for sweepers (optuna). A bad override (typo, unknown option,
    sweep values without -m) becomes one line naming the fix, exit status 2."""
    os.environ.setdefault("PROJECT_ROOT", str(project_root))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Hydra prints composition errors itself and exits 1; with HYDRA_FULL_ERROR it raises them to us
    # instead (cheaper than composing once more ahead of Hydra to catch them).
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    @hydra.main(version_base="1.3", config_path=str(project_root / "conf"), config_name=config_name)
    def app(cfg: DictConfig) -> float | None:
        return main_entry(cfg)

    try:
        app()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as err:
        print(f"error: {explain_override_error(err, config_name)}", file=sys.stderr)
        sys.exit(2)


def main_entry(cfg: DictConfig) -> float | None:
    try:
        schema.check(cfg)  # a wrong value fails in a fraction of a second, before torch is imported
        # imported here, not at the top: a mistyped override or value exits before torch and Lightning load
        from tunelab.pipeline import run
        from tunelab.results import monitor

        metrics = run(cfg)
        optimized = monitor(cfg)[0]
    except (ConfigError, TrainingError) as err:
        # one clear line instead of a traceback: the message names the fix
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 3)
    return metrics.get(optimized)


def explain_override_error(err: Exception, config_name: str) -> str:
    """One line naming the fix for an unknown key or an unknown group option."""
    import difflib
    import re

    from omegaconf import OmegaConf

    from tunelab.config import CONF_DIR

    text = str(err)
    if getattr(err, "override", None):  # OverrideParseException: Hydra's grammar rejected the text
        return f"cannot parse the override {err.override!r}: {text.splitlines()[0]} (quote values with special characters)"
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
