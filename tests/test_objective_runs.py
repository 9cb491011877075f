"""Objectives through the real pipeline: square loss on classes with calibration outputs, standardized
regression targets reported in target units (multi-label: test_multilabel.py)."""

import json
import statistics

import pytest
import torch

from conftest import compose_cfg
from tunelab.module import TransformerModule
from tunelab.pipeline import build_datamodule

NO_CHECKPOINTS = ["callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null"]


def test_square_loss_trains_a_classifier_with_calibration_and_reliability_diagram(run_cfg) -> None:
    metrics, run_dir = run_cfg("loss=mse", "optimizer=adamw", "data.train_limit=64", "data.batch_size=16",
                               "trainer.max_epochs=1", *NO_CHECKPOINTS)
    for stage in ("val", "test"):
        assert {f"{stage}/{m}" for m in ("acc", "f1_macro", "mcc", "ece", "brier", "nll")} <= set(metrics)
    report = json.loads((run_dir / "test_report.json").read_text())
    calibration = report["calibration"]
    assert sum(calibration["count"]) == report["support"] == 200
    assert calibration["ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    assert (run_dir / "reliability_diagram.png").stat().st_size > 0
    assert "ECE" in (run_dir / "test_report.txt").read_text()


def test_standardized_regression_reports_in_target_units(run_cfg, tmp_path, cache_dir) -> None:
    """The loss learns z-scores; test/mse, the checkpoint's predictions and eval.py are in the 0-5 score
    units, with the training split's mean / std stored in the checkpoint."""
    args = ["data=stsb", "loss=mse", "data.train_limit=128", "data.batch_size=16", "trainer.max_epochs=1",
            "optimizer.lr=1e-3"]
    metrics, run_dir = run_cfg(*args)
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    module = TransformerModule.load_from_checkpoint(best, map_location="cpu").eval()
    datamodule = build_datamodule(compose_cfg(tmp_path / "dm", *args, cache=cache_dir))
    datamodule.setup("fit")
    train_targets = [e["labels"] for e in datamodule.splits["train"].examples]
    info = module.hparams.label_info
    assert info["target_mean"] == pytest.approx(statistics.fmean(train_targets))
    assert info["target_std"] == pytest.approx(statistics.pstdev(train_targets))
    with torch.no_grad():
        batches = list(datamodule.test_dataloader())
        preds = torch.cat([module.task.to_label_units(module(b)) for b in batches])
        raw = torch.cat([module(b).squeeze(-1) for b in batches])
    gold = torch.cat([b["labels"] for b in batches])
    assert metrics["test/mse"] == pytest.approx(((preds - gold) ** 2).mean().item(), rel=1e-4)
    # the loss is in std units: MSE / variance
    assert metrics["test/loss"] == pytest.approx(metrics["test/mse"] / info["target_std"] ** 2, rel=1e-4)
    # predictions on the scale of the scores (around their mean), the raw outputs around 0
    assert abs(preds.mean() - gold.mean()) < 0.5 * info["target_std"] < abs(raw.mean() - gold.mean())
    # eval.py maps outputs with the checkpoint's statistics, whatever its own data config says
    evaluated, _ = run_cfg(*args, "train=false", f"ckpt_path={best}", "data.standardize_targets=false")
    assert evaluated["test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-5)


def test_standardized_targets_learn_faster_than_raw_ones(run_cfg) -> None:
    """MiniLM, 4 steps on STS-B pairs: the head starts near 0 while scores average ~2.7. On raw targets the
    first steps move the outputs' mean; on z-scores they fit the similarity, and val Pearson shows it."""
    args = ["model=minilm", "data=stsb", "loss=mse", "data.train_limit=64", "data.batch_size=16", "data.max_length=64",
            "optimizer.lr=1e-4", "trainer.max_epochs=1", "test=false", *NO_CHECKPOINTS]
    standardized, _ = run_cfg(*args)
    raw, _ = run_cfg(*args, "data.standardize_targets=false")
    assert standardized["val/pearson"] > raw["val/pearson"] + 0.1, (standardized, raw)
    assert standardized["val/mse"] < raw["val/mse"]


def test_merged_lora_export_predicts_in_target_units(run_cfg) -> None:
    """peft.merge_on_save writes a plain transformers model; with standardized targets its raw outputs are
    already in score units (the mean / std folded into the output layer), equal to the run's predictions."""
    import transformers

    metrics, run_dir = run_cfg("data=stsb", "loss=mse", "peft=lora", "peft.merge_on_save=true", "trainer.max_steps=4",
                               "data.train_limit=64", "data.batch_size=16")
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    module = TransformerModule.load_from_checkpoint(best, map_location="cpu").eval()
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(run_dir / "merged").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "merged")
    batch = dict(tokenizer(["a man plays a guitar", "the cat sleeps"], ["a man plays music", "stocks fell"],
                           padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = module.task.to_label_units(module(batch))
        exported = merged(**batch).logits.squeeze(-1)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-4)
    assert module.task.target_std != 1.0  # standardized: the fold was not the identity


def test_a_class_weighted_epoch_loss_is_the_weighted_loss_over_the_split_whatever_the_batches(run_cfg) -> None:
    """loss.class_weights: each batch's loss is divided by its targets' weights, so the epoch loss weighs batches by
    those (not by rows): the same model gets the same test/loss in batches of 3 and of 200, and it is the weighted
    cross-entropy of its predictions, not the unweighted one (test/nll)."""
    args = ("loss.class_weights=[1.0,5.0]", "data.train_limit=32", "trainer.max_steps=2", "optimizer.lr=1e-2",
            "data.group_by_length=true", *NO_CHECKPOINTS)
    small, run_dir = run_cfg(*args, "data.eval_batch_size=3")
    whole, _ = run_cfg(*args, "data.eval_batch_size=200")
    assert small["test/acc"] == whole["test/acc"]
    assert small["test/loss"] == pytest.approx(whole["test/loss"], rel=1e-5)
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    weight = {"negative": 1.0, "positive": 5.0}
    weighted = sum(-weight[r["gold"]] * torch.tensor(r["probs"][r["gold"]]).log() for r in rows)
    assert small["test/loss"] == pytest.approx(float(weighted) / sum(weight[r["gold"]] for r in rows), rel=1e-3)
    assert abs(small["test/loss"] - small["test/nll"]) > 1e-3
