"""Test a checkpoint on the data's test split: `python eval.py ckpt_path=outputs/.../checkpoints/last.ckpt`."""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tunelab.cli import main_entry, preflight  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return main_entry(cfg)


if __name__ == "__main__":
    preflight("eval", sys.argv[1:])
    main()
