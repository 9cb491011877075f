"""tunelab.metrics: sync-free updates must give exactly torchmetrics' numbers (the classification
metrics keep torchmetrics' compute(); their one state is the confusion matrix it reads tp / fp / tn / fn off)."""

import pytest
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.text import Perplexity as TorchmetricsPerplexity

from tunelab import metrics as tm
from tunelab.metric_states import keep_float32_states

PAIRS = [
    (tm.Accuracy, MulticlassAccuracy, {"average": "micro"}),
    (tm.F1Score, MulticlassF1Score, {"average": "micro"}),
    (tm.F1Score, MulticlassF1Score, {"average": "macro"}),
    (tm.Precision, MulticlassPrecision, {"average": "macro"}),
    (tm.Recall, MulticlassRecall, {"average": "macro"}),
    (tm.MatthewsCorrCoef, MulticlassMatthewsCorrCoef, {}),
    (tm.ConfusionMatrix, MulticlassConfusionMatrix, {}),
]


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_classification_metrics_equal_torchmetrics(ours, theirs, kwargs, num_classes) -> None:
    gen = torch.Generator().manual_seed(num_classes)
    mine, ref = ours(num_classes, validate_args=False, **kwargs), theirs(num_classes, **kwargs)
    for _ in range(3):
        target = torch.randint(0, num_classes, (40,), generator=gen)
        # skewed predictions: some classes never predicted (macro averages' zero-division cases)
        preds = torch.where(torch.rand(40, generator=gen) < 0.6, target, torch.zeros_like(target))
        mine.update(preds, target)
        ref.update(preds, target)
    assert torch.allclose(mine.compute().float(), ref.compute().float(), atol=1e-6)


@pytest.mark.parametrize(("preds", "target", "mcc"), [
    ([1, 0, 1], [1, 0, 1], 1.0),
    ([0, 1], [1, 0], -1.0),
    # one class predicted for everything: no correlation (sklearn's 0; torchmetrics 1.9 gives -0.026)
    ([0] * 60, [0] * 27 + [1] * 33, 0.0),
    ([0, 0, 0], [0, 0, 0], 0.0),  # one class in the labels too: undefined, 0 as sklearn says
    ([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], 0.375),  # multi-class (Gorodkin): (3*5 - 9) / sqrt((25-9) * (25-9))
])
def test_mcc_is_sklearns(preds, target, mcc) -> None:
    metric = tm.MatthewsCorrCoef(3 if 2 in preds + target else 2)
    metric.update(torch.tensor(preds), torch.tensor(target))
    assert metric.compute().item() == pytest.approx(mcc, abs=1e-6)


def test_token_accuracy_skips_ignored_positions() -> None:
    acc = tm.TokenAccuracy()
    acc.update(torch.tensor([[1, 2, 0, 4]]), torch.tensor([[1, -100, 0, 3]]))  # 2 of the 3 kept positions
    assert acc.compute().item() == pytest.approx(2 / 3)


def test_perplexity_equals_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    ours, ref = tm.Perplexity(), TorchmetricsPerplexity(ignore_index=-100)
    for _ in range(2):
        logits = torch.randn(3, 7, 11, generator=gen)
        labels = torch.randint(0, 11, (3, 7), generator=gen)
        labels[0, 2:] = -100
        ours.update(logits, labels)
        ref.update(logits, labels)
    assert ours.compute().item() == pytest.approx(ref.compute().item(), rel=1e-5)


def test_mean_loss_weights_batches_by_their_size() -> None:
    # the epoch loss is the mean over rows: a short last batch counts for its rows only
    mean = tm.MeanLoss()
    mean.update(torch.tensor(1.0), 4)
    mean.update(torch.tensor(4.0), 2)
    assert mean.compute().item() == pytest.approx((4 * 1.0 + 2 * 4.0) / 6)
    mean.reset()
    mean.update(torch.tensor(0.5, requires_grad=True) * 2, 3)
    assert mean.compute().item() == pytest.approx(1.0) and not mean.total.requires_grad


def test_classification_metrics_update_as_two_compute_groups() -> None:
    """The six counting metrics share one confusion-matrix state (one argmax and one scatter-add per batch),
    the three calibration metrics one set of sums: a split state would count the same batch again."""
    from tunelab.tasks import get_task

    metrics = get_task("classification").metrics(3)
    metrics.update(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    groups = sorted(sorted(g) for g in metrics.compute_groups.values())
    assert groups == [["acc", "f1_macro", "f1_micro", "mcc", "precision", "recall"], ["brier", "ece", "nll"]]


def test_every_macro_average_leaves_out_the_classes_that_never_occur() -> None:
    """A third class with no test example and no prediction: the logged macro F1 / precision / recall, the test
    report's macro avg and torchmetrics agree (the class is left out, and the report says so); likewise for a
    multi-label label that never occurs."""
    from tunelab.metrics import F1Score, MultiLabelCounts, Precision, Recall
    from tunelab.report_tables import classification_report

    preds, gold = torch.tensor([1, 1, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 0])
    logged = {}
    for name, metric in (("f1", F1Score(3, average="macro")), ("precision", Precision(3, average="macro")),
                         ("recall", Recall(3, average="macro"))):
        metric.update(preds, gold)
        logged[name] = metric.compute().item()
    confusion = torch.zeros(3, 3, dtype=torch.long)
    confusion.index_put_((gold, preds), torch.ones(5, dtype=torch.long), accumulate=True)
    report, text = classification_report(confusion, ["negative", "positive", "neutral"])
    assert report["macro_avg"] == pytest.approx(logged)
    assert logged["recall"] == pytest.approx((1 / 3 + 1) / 2)  # two classes, not three
    assert report["not_in_macro_avg"] == ["neutral"] and "left out: neutral" in text
    # label 2 never occurs: torchmetrics' multi-label macro F1 would count it as 0 (2/3 + 2/3 + 0) / 3
    multi_preds, multi_gold = torch.tensor([[1, 0, 0], [1, 1, 0]]), torch.tensor([[1, 1, 0], [0, 1, 0]])
    ours = MultiLabelCounts(3, "f1_macro")
    ours.update(multi_preds, multi_gold)
    assert ours.compute().item() == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_metric_states_stay_float32_under_half_precision_modules() -> None:
    """trainer.precision=bf16-true converts the whole module: the epoch sums go back to float32, where 300 examples
    count as 300 (bf16 holds integers exactly only to 256)."""
    calibration = tm.Calibration("bins")
    perplexity = tm.Perplexity()
    module = torch.nn.ModuleDict({"calibration": calibration, "perplexity": perplexity}).to(torch.bfloat16)
    assert calibration.count.dtype == torch.bfloat16
    keep_float32_states(module)
    logits, target = torch.randn(300, 2), torch.randint(0, 2, (300,))
    calibration.update(logits, target)
    assert calibration.count.dtype == torch.float32 and calibration.count.sum().item() == 300
    # integer counts stay integers (a float32 token count stops counting exactly at 2**24)
    assert perplexity.tokens.dtype == torch.int64 and perplexity.nll_sum.dtype == torch.float32
    calibration.reset()
    assert calibration.count.dtype == torch.float32  # reset to a float32 default


def test_calibration_bins_do_not_follow_a_half_precision_default_dtype() -> None:
    """bf16-true sets the default dtype to bf16 around each step, where the metrics update: bin edges built in it
    (1/15 -> 0.0669) put a confidence of 0.0668 in another bin than the recomputation from predictions.jsonl."""
    confidence = torch.tensor([0.0668, 0.6650, 0.7340])
    expected = tm.confidence_bins(confidence)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        got = tm.confidence_bins(confidence)
    finally:
        torch.set_default_dtype(default)
    assert expected.tolist() == [1, 9, 11] and got.tolist() == expected.tolist()


def test_a_bf16_true_run_trains_and_tests(run_cfg) -> None:
    metrics, run_dir = run_cfg("trainer.precision=bf16-true", "data.train_limit=64", "trainer.max_epochs=1")
    assert 0 <= metrics["test/acc"] <= 1 and metrics["test/ece"] >= 0
