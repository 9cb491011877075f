"""Test a checkpoint on the data's test split: `python eval.py ckpt_path=outputs/.../checkpoints/last.ckpt`."""

from pathlib import Path

from tunelab.cli import launch

if __name__ == "__main__":
    launch("eval", project_root=Path(__file__).resolve().parent)
