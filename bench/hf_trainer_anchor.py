"""The transformers.Trainer anchor of a time-to-accuracy experiment: the same model and task head, the
same training and test rows (read from the same TSVs by tunelab's datamodule: same tokenization,
max_length and carved val split), batch size, learning rate, linear warmup / decay, epochs, weight
decay, gradient clipping, bf16 autocast, fused AdamW, length grouping and padding multiple, trained and
tested by transformers.Trainer. Writes the seconds from process start to the test metric (test_metric_s;
from BENCH_T0 when bench/time_to_accuracy.py starts it, as train.py's StartupTimer).

python bench/hf_trainer_anchor.py experiment=sst2_minilm_gpu --out anchor.json   # overrides as train.py's
"""

from __future__ import annotations

import os
import time

# process start (imports included): the launcher's BENCH_T0, as train.py's StartupTimer counts
T0 = float(os.environ.get("BENCH_T0") or time.time())

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

import tunelab  # noqa: E402,F401  (resolvers)
from tunelab.config import compose_config  # noqa: E402
from tunelab.model import build_model  # noqa: E402
from tunelab.pipeline import build_datamodule  # noqa: E402
from tunelab.tasks import get_task  # noqa: E402


def training_arguments(cfg: DictConfig, out: Path, compile_model: bool) -> transformers.TrainingArguments:
    """tunelab's settings in Trainer's words (Trainer also leaves biases and LayerNorm weights undecayed)."""
    gpu = torch.cuda.is_available()
    opt = cfg.optimizer
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    warmup = float(cfg.scheduler.get("warmup_ratio") or 0.0)
    # transformers 5 reads a warmup_steps below 1 as a fraction of the steps (warmup_ratio is gone)
    warmup_kw = {"warmup_ratio": warmup} if "warmup_ratio" in fields else {"warmup_steps": warmup}
    kwargs = dict(
        output_dir=str(out), seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=cfg.data.batch_size, per_device_eval_batch_size=cfg.data.eval_batch_size,
        num_train_epochs=cfg.trainer.max_epochs, learning_rate=opt.lr, weight_decay=opt.weight_decay,
        adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], adam_epsilon=opt.eps, lr_scheduler_type="linear",
        max_grad_norm=float(cfg.trainer.get("gradient_clip_val") or 0.0),  # Trainer's default: 1.0; 0 = off
        optim="adamw_torch_fused" if gpu else "adamw_torch", bf16=gpu and "bf16" in str(cfg.trainer.precision),
        tf32=gpu and cfg.get("float32_matmul_precision") == "high",
        group_by_length=cfg.data.group_by_length, dataloader_drop_last=cfg.data.get("drop_last", False),
        dataloader_num_workers=2 if gpu else 0, dataloader_pin_memory=gpu, dataloader_persistent_workers=gpu,
        save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50, disable_tqdm=True,
        torch_compile=compile_model, **warmup_kw,
    )
    return transformers.TrainingArguments(**{k: v for k, v in kwargs.items() if k in fields})


def scorer(task: str) -> Callable[[transformers.EvalPrediction], dict[str, float]]:
    """The test metrics tunelab reports for the task (accuracy; Spearman and Pearson)."""
    def score(p: transformers.EvalPrediction) -> dict[str, float]:
        if task == "regression":
            preds = p.predictions.reshape(-1)
            return {"spearman": float(spearmanr(preds, p.label_ids)[0]), "pearson": float(pearsonr(preds, p.label_ids)[0])}
        return {"acc": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--compile", action="store_true", help="TrainingArguments(torch_compile=True)")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        out = Path(tmpdir)
        cfg = compose_config(args.overrides, out)
        transformers.set_seed(cfg.seed)
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        task = get_task(cfg.data.task)
        model_cfg = {**OmegaConf.to_container(cfg.model, resolve=True), "compile": False}  # Trainer compiles
        model = build_model(model_cfg, task, max(len(dm.label_names), 1))
        collator = transformers.DataCollatorWithPadding(dm.tokenizer, pad_to_multiple_of=cfg.data.pad_to_multiple_of)
        trainer = transformers.Trainer(model=model, args=training_arguments(cfg, out, args.compile),
                                       train_dataset=dm.splits["train"].examples, data_collator=collator,
                                       compute_metrics=scorer(cfg.data.task))
        t_train = time.time()
        trainer.train()
        train_s = time.time() - t_train
        trainer.args.dataloader_drop_last = False  # Trainer applies it to evaluation too; tunelab does not
        metrics = trainer.predict(dm.splits["test"].examples, metric_key_prefix="test").metrics
    result = {"anchor": "transformers.Trainer", "transformers": transformers.__version__,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "overrides": args.overrides, "compile": args.compile, "train_rows": len(dm.splits["train"]),
              "optimizer_steps": trainer.state.global_step, "train_s": train_s,
              **{k.replace("test_", "test/"): v for k, v in metrics.items() if k.startswith("test_")},
              "test_metric_s": time.time() - T0}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
