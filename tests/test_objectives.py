"""Objectives and what judges them, on hand-computed cases: square loss on classification (Hui & Belkin
scaling), BCE / sigmoid focal for multi-label, multi-label metrics, calibration (ECE, Brier, NLL), regression
target standardization, multi-label label parsing."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError, MultilabelExactMatch, MultilabelF1Score

from tunelab import losses, metrics, tasks
from tunelab.data.labels import LabelSet, split_labels, target_stats
from tunelab.errors import ConfigError
from tunelab.report_tables import calibration_report, multilabel_report


def test_square_loss_on_classes_regresses_onto_scaled_one_hot() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    # example 0: (2-1)^2 + 0.5^2 + 1^2 = 2.25; example 1: 0 + 0 + 9 = 9; mean over 6 entries
    assert losses.MSELoss()(logits, labels).item() == pytest.approx((2.25 + 9) / 6)
    # k = 2, M = 3: true-class terms 2*(2-3)^2 = 2 and 2*(1-3)^2 = 8
    expected = (2 + 0.25 + 1 + 0 + 8 + 9) / 6
    assert losses.MSELoss(scale_k=2, scale_m=3)(logits, labels).item() == pytest.approx(expected)
    # Huber with delta 1: |e| <= 1 -> e^2 / 2, else |e| - 1/2; errors 1, .5, 1 | 0, 0, 3
    huber = (0.5 + 0.125 + 0.5 + 0 + 0 + 2.5) / 6
    assert losses.HuberLoss(delta=1.0)(logits, labels).item() == pytest.approx(huber)


def test_square_loss_on_regression_is_the_plain_loss() -> None:
    pred, target = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.5, 2.0, 2.0])
    assert losses.MSELoss()(pred, target).item() == pytest.approx((0.25 + 0 + 4) / 3)
    assert losses.MSELoss(scale_k=5, scale_m=5)(pred, target).item() == pytest.approx((0.25 + 0 + 4) / 3)


def test_bce_and_balanced_pos_weight_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: -log sigmoid(-x)
    # -log p for a positive = softplus(-x); -log(1 - p) for a negative = softplus(x)
    plain = (sp(0.0) + sp(2.0) + sp(-1.0) + sp(0.0)) / 4
    bce = losses.BCELoss()
    bce.fit_class_weights([1, 1], examples=2)
    assert bce(logits, target).item() == pytest.approx(plain)
    # training split: 10 examples, label 0 positive twice, label 1 five times -> pos_weight 4, 1
    balanced = losses.BCELoss("balanced")
    balanced.fit_class_weights([2, 5], examples=10)
    assert balanced.class_weights.tolist() == [4.0, 1.0]
    weighted = (4 * sp(0.0) + sp(2.0) + sp(-1.0) + 1 * sp(0.0)) / 4
    assert balanced(logits, target).item() == pytest.approx(weighted)
    with pytest.raises(ConfigError, match="loss.pos_weight has 3 entries but the data has 2 labels"):
        losses.BCELoss([1.0, 2.0, 3.0]).fit_class_weights([2, 5], examples=10)


def test_sigmoid_focal_on_multi_label_targets() -> None:
    logits = torch.tensor([[0.5, -2.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")[0]
    p_t = torch.tensor([torch.sigmoid(torch.tensor(0.5)), 1 - torch.sigmoid(torch.tensor(-2.0)),
                        1 - torch.sigmoid(torch.tensor(1.0))])
    expected = ((1 - p_t) ** 2 * bce).mean()
    assert losses.FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected.item())
    assert losses.FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(losses.BCELoss()(logits, target).item())


MULTI_PREDS = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
MULTI_GOLD = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])


def multilabel_metric(stat: str) -> float:
    metric = metrics.HammingLoss(3) if stat == "hamming" else metrics.MultiLabelCounts(3, stat)
    metric.update(MULTI_PREDS[:2], MULTI_GOLD[:2])
    metric.update(MULTI_PREDS[2:], MULTI_GOLD[2:])
    return metric.compute().item()


def test_multilabel_metrics_by_hand_and_against_torchmetrics() -> None:
    # per label tp / pred / gold: label 0: 2/2/2, label 1: 1/2/1, label 2: 0/1/1
    f1 = [1.0, 2 * 0.5 * 1 / 1.5, 0.0]
    assert multilabel_metric("f1_micro") == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # tp 3, fp 2, fn 1
    assert multilabel_metric("f1_macro") == pytest.approx(sum(f1) / 3)
    assert multilabel_metric("subset_acc") == pytest.approx(2 / 4)  # rows 1 and 3 match exactly
    assert multilabel_metric("hamming") == pytest.approx(3 / 12)  # 3 wrong decisions of 4 x 3
    for stat, theirs in (("f1_micro", MultilabelF1Score(3, average="micro")),
                         ("f1_macro", MultilabelF1Score(3, average="macro")), ("subset_acc", MultilabelExactMatch(3))):
        theirs.update(MULTI_PREDS, MULTI_GOLD)
        assert multilabel_metric(stat) == pytest.approx(theirs.compute().item())
    assert tasks.get_task("multilabel").metric_mode("val/hamming") == "min"


def test_multilabel_report_and_decisions_at_the_threshold() -> None:
    task = tasks.get_task("multilabel").with_labels(["a", "b", "c"], {"threshold": 0.7})
    logits = torch.tensor([[0.0, 1.0, 2.0]])  # sigmoid 0.5, 0.731, 0.881
    assert task.predict(logits).tolist() == [[0, 1, 1]]
    outputs = {k: v[0] for k, v in task.prediction_outputs(logits).items()}
    record = task.prediction_record(outputs, torch.tensor([1.0, 0.0, 1.0]), ["a", "b", "c"])
    assert record["gold"] == ["a", "c"] and record["pred"] == ["b", "c"]
    assert record["probs"]["b"] == pytest.approx(1 / (1 + math.exp(-1)))
    assert "gold" not in task.prediction_record(outputs, None, ["a", "b", "c"])
    counts = metrics.MultiLabelCounts(3, "counts")
    counts.update(MULTI_PREDS, MULTI_GOLD)
    report, text = multilabel_report(counts.compute(), ["a", "b", "c"], 0.7)
    assert report["classes"]["b"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1,
                                      "predicted": 2}
    assert report["micro_avg"]["f1"] == pytest.approx(multilabel_metric("f1_micro"))
    assert report["subset_accuracy"] == 0.5 and report["hamming_loss"] == 0.25
    assert "subset accuracy 0.5000, Hamming loss 0.2500" in text


def test_calibration_by_hand() -> None:
    # probabilities (0.8, 0.2), (0.3, 0.7), (0.6, 0.4), (0.5, 0.5) as logits; classes 0, 0, 1, 1
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    logits, target = probs.log(), torch.tensor([0, 0, 1, 1])
    found = {}
    for stat in ("ece", "brier", "nll", "bins"):
        metric = metrics.Calibration(stat)
        metric.update(logits[:2], target[:2])
        metric.update(logits[2:], target[2:])
        found[stat] = metric.compute()
    # top-label confidence / correct: 0.8 / 1, 0.7 / 0, 0.6 / 0, 0.5 / 0 (a tie predicts class 0)
    # bins of width 1/15: 0.8 -> 12, 0.7 -> 10, 0.6 -> 9, 0.5 -> 7; ECE = sum |correct - confidence| / n
    assert found["ece"].item() == pytest.approx((0.2 + 0.7 + 0.6 + 0.5) / 4, abs=1e-6)
    # Brier: sum over classes (p - onehot)^2 = 2 (1 - p_true)^2 for two classes
    assert found["brier"].item() == pytest.approx(2 * (0.2**2 + 0.7**2 + 0.6**2 + 0.5**2) / 4, abs=1e-6)
    assert found["nll"].item() == pytest.approx(-(math.log(0.8) + math.log(0.3) + math.log(0.4) + math.log(0.5)) / 4,
                                                abs=1e-6)
    count, confidence, correct = found["bins"]
    assert count.nonzero().flatten().tolist() == [7, 9, 10, 12] and count.sum() == 4
    assert correct[12] == 1 and correct.sum() == 1 and confidence[10].item() == pytest.approx(0.7)
    report, text = calibration_report(found["bins"])
    assert report["ece"] == pytest.approx(found["ece"].item()) and report["accuracy"][12] == 1.0
    assert report["count"][0] == 0 and report["confidence"][0] is None and "ECE 0.5000" in text


def test_calibration_equals_torchmetrics_ece() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 4, generator=gen) * 2
    target = torch.randint(0, 4, (500,), generator=gen)
    ours, theirs = metrics.Calibration("ece"), MulticlassCalibrationError(4, n_bins=15)
    ours.update(logits, target)
    theirs.update(logits, target)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-6)


def test_classification_metrics_take_logits() -> None:
    """The counting metrics argmax the logits the calibration metrics need."""
    logits, target = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]]), torch.tensor([0, 1, 1])
    acc = metrics.Accuracy(2, average="micro", validate_args=False)
    acc.update(logits, target)
    assert acc.compute().item() == pytest.approx(2 / 3)
    assert tasks.get_task("classification").metric_mode("val/ece") == "min"


def test_regression_task_standardizes_targets_and_reports_label_units() -> None:
    task = tasks.get_task("regression").with_labels([], {"target_mean": 2.5, "target_std": 1.5})
    labels = torch.tensor([1.0, 2.5, 5.5])
    assert task.loss_targets(labels).tolist() == pytest.approx([-1.0, 0.0, 2.0])
    outputs = torch.tensor([[-1.0], [0.0], [2.0]])
    assert task.to_label_units(outputs).tolist() == pytest.approx([1.0, 2.5, 5.5])
    preds, targets = task.metric_inputs(outputs, labels)
    assert preds.tolist() == pytest.approx(labels.tolist()) and targets is not None
    raw = tasks.get_task("regression").with_labels([], {})  # data.standardize_targets=false
    assert raw.loss_targets(labels).tolist() == labels.tolist()
    stats = target_stats([1.0, 2.0, 3.0, 6.0])
    assert stats["target_mean"] == 3.0 and stats["target_std"] == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4))
    assert target_stats([2.0, 2.0])["target_std"] == 1.0


def test_multilabel_cells_parse_into_multi_hot_vectors() -> None:
    assert split_labels(" sports, politics ,", ",") == ["sports", "politics"]
    assert split_labels("", ",") == []
    labels = LabelSet(None, ["b", "a", "c", "a"], "label")
    assert labels.names == ["a", "b", "c"]
    assert labels.multi_hot(["c", "a"], "f:2").tolist() == [1.0, 0.0, 1.0]
    assert labels.multi_hot([], "f:3").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(Exception, match=r"f:4: label 'd' is not in the label set"):
        labels.multi_hot(["d"], "f:4")


def test_json_list_labels_are_multilabel_rows_only() -> None:
    assert split_labels(["a", " b", ""], ",") == ["a", "b"]
    with pytest.raises(Exception, match=r"f:2: the label is a list \['a', 'b'\]; rows with several labels need "
                                        r"data.task=multilabel"):
        LabelSet(None, ["a", "b"], "label").id(["a", "b"], "f:2")



def _two_batches(kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) of two batches of different sizes, labels as the task of `kind` gives them; token labels
    with padding and a continuation sub-token ignored."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for rows in (5, 2):
        if kind == "tokens":
            labels = torch.randint(0, 3, (rows, 6), generator=gen)
            labels[:, 4:] = losses.IGNORE_INDEX
            labels[0, 1] = losses.IGNORE_INDEX
            batches.append((torch.randn(rows, 6, 3, generator=gen), labels))
        elif kind == "multilabel":
            batches.append((torch.randn(rows, 3, generator=gen), torch.randint(0, 2, (rows, 3), generator=gen).float()))
        elif kind == "regression":
            batches.append((torch.randn(rows, 1, generator=gen), torch.randn(rows, generator=gen)))
        else:
            batches.append((torch.randn(rows, 3, generator=gen), torch.randint(0, 3, (rows,), generator=gen)))
    return batches


WEIGHTS = [1.0, 4.0, 0.5]


@pytest.mark.parametrize("loss,kind", [
    (losses.CrossEntropyLoss(), "classes"), (losses.CrossEntropyLoss(class_weights=WEIGHTS), "classes"),
    (losses.CrossEntropyLoss(0.1, class_weights="balanced"), "classes"),
    (losses.TokenCrossEntropyLoss(), "tokens"), (losses.TokenCrossEntropyLoss(class_weights=WEIGHTS), "tokens"),
    (losses.FocalLoss(class_weights=WEIGHTS), "classes"), (losses.FocalLoss(class_weights=WEIGHTS), "tokens"),
    (losses.FocalLoss(class_weights=WEIGHTS), "multilabel"), (losses.BCELoss("balanced"), "multilabel"),
    (losses.MSELoss(), "classes"), (losses.HuberLoss(), "regression"), (losses.NextTokenCrossEntropyLoss(), "tokens"),
], ids=lambda x: x if isinstance(x, str) else f"{x.name}{'' if x.class_weights_spec is None else '_weighted'}")
def test_epoch_loss_weighted_by_batch_weight_is_the_loss_over_all_batches(loss: losses.Loss, kind: str) -> None:
    """The epoch loss is each batch's loss times Loss.batch_weight, over the weights' sum: the same number as the
    loss over the epoch's examples as one batch, whatever the batch sizes, ignored tokens or class weights."""
    loss.fit_class_weights([3, 1, 2], examples=6)
    batches = _two_batches(kind)
    epoch = metrics.MeanLoss()
    for logits, labels in batches:
        epoch.update(loss(logits, labels), loss.batch_weight(labels))
    whole = loss(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert epoch.compute().item() == pytest.approx(whole.item(), rel=1e-5)
