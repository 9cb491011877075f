"""Compose the project's Hydra config programmatically (tests, benchmarks, notebooks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

PROJECT_ROOT = Path(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[2]))
CONF_DIR = PROJECT_ROOT / "conf"


def compose_config(overrides: Iterable[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """The config `python train.py <overrides>` would run with, writing into output_dir."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg
