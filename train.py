"""Fine-tune a pretrained transformer: `python train.py data=stsb loss=mse optimizer=adamw`.

Composes conf/train.yaml with the command line's overrides, then fits, tests the best checkpoint and
writes the report (src/tunelab/pipeline.py). `-m` runs sweeps.
"""

from pathlib import Path

from tunelab.cli import launch

if __name__ == "__main__":
    launch("train", project_root=Path(__file__).resolve().parent)
