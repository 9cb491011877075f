"""Run a trained model over unlabelled text:
`python predict.py ckpt_path=outputs/.../checkpoints/<best>.ckpt data.predict_file=new.csv` (or
ckpt_path=<run dir>/hf_model) writes predictions.jsonl into the run dir (src/tunelab/predict.py)."""

from pathlib import Path

from tunelab.cli import launch

if __name__ == "__main__":
    launch("predict", project_root=Path(__file__).resolve().parent)
