"""Fine-tune a pretrained transformer: `python train.py data=stsb loss=mse optimizer=adamw`.

Compose the config (conf/train.yaml), then fit, test and report (src/tunelab/pipeline.py).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tunelab.cli import main_entry, preflight  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the optimized metric so hydra sweepers (optuna) can use it."""
    return main_entry(cfg)


if __name__ == "__main__":
    preflight("train", sys.argv[1:])
    main()
