"""The tables of the test report, from counts: precision / recall / F1 per class (classification, from the
confusion matrix), per label (multi-label) or per entity type (token classification, from span counts), one
formula and one layout; and the calibration table of the reliability diagram."""

from __future__ import annotations

from typing import Sequence

import torch

AVERAGE_NAMES = {"micro_avg": "micro avg", "macro_avg": "macro avg", "weighted_avg": "weighted avg"}


# One formula each for the logged metric, the test report and tunelab.compare's recomputation from predictions:
# torch tensors or numpy arrays (a bootstrap's [replicates, ...] sums), the last axis over classes / bins / labels
def count_ratio(num, den):
    """num / den of counts, 0 where den is 0 (where num is 0 too: true positives <= predicted, gold), as
    seqeval's and scikit-learn's zero_division=0."""
    return num / (den + (den == 0))


def prf(tp, pred, gold):
    """Precision, recall and F1 (= 2·tp / (predicted + gold)) from true-positive, predicted and gold counts."""
    return count_ratio(tp, pred), count_ratio(tp, gold), count_ratio(2 * tp, pred + gold)


def macro_mean(values, pred, gold):
    """The macro average of per-class values over the classes that occur (gold or predicted): a class with neither
    has no precision, recall or F1 to average (torchmetrics' rule), so every macro figure of a run, logged, in its
    report or recomputed by tunelab.compare, is the same number."""
    present = (pred + gold) > 0
    return (values * present).sum(-1) / present.sum(-1).clip(min=1)


def expected_calibration_error(confidence, correct, examples):
    """Top-label ECE from per-bin sums of the confidence and of the correct predictions: sum over bins of
    |accuracy - confidence| x the bin's share of the examples."""
    return abs(correct - confidence).sum(-1) / examples


def hamming_loss(tp, pred, gold, examples):
    """Multi-label: wrong label decisions (false positives + false negatives) over examples x labels."""
    return ((pred - tp) + (gold - tp)).sum(-1) / (examples * tp.shape[-1])


def per_class_report(tp: torch.Tensor, pred: torch.Tensor, gold: torch.Tensor, names: Sequence[str]) -> dict:
    """{"classes": {name: p/r/f1/support/predicted}, "macro_avg", "micro_avg", "weighted_avg", "support",
    "predicted"} from per-class count vectors."""
    tp, pred, gold = tp.cpu(), pred.cpu(), gold.cpu()
    p, r, f = prf(tp, pred, gold)
    classes = {
        name: {"precision": p[i].item(), "recall": r[i].item(), "f1": f[i].item(), "support": int(gold[i]),
               "predicted": int(pred[i])}
        for i, name in enumerate(names)
    }
    mp, mr, mf = prf(tp.sum(), pred.sum(), gold.sum())
    weights = gold.double() / max(int(gold.sum()), 1)
    return {
        "classes": classes,
        "micro_avg": {"precision": mp.item(), "recall": mr.item(), "f1": mf.item()},
        "macro_avg": {k: macro_mean(v, pred, gold).item() for k, v in (("precision", p), ("recall", r), ("f1", f))},
        "weighted_avg": {k: float((v.double() * weights).sum()) for k, v in (("precision", p), ("recall", r), ("f1", f))},
        "support": int(gold.sum()),
        "predicted": int(pred.sum()),
        "not_in_macro_avg": [name for i, name in enumerate(names) if gold[i] + pred[i] == 0],
    }


def table_rows(report: dict, averages: Sequence[str], accuracy: float | None = None) -> list[list]:
    """The report's rows, [name, precision, recall, f1, support]: one per class, then accuracy (when given;
    no precision / recall) and the chosen averages. The one layout of the text table and the trackers' tables."""
    rows = [[name, r["precision"], r["recall"], r["f1"], r["support"]] for name, r in report["classes"].items()]
    if accuracy is not None:
        rows.append(["accuracy", None, None, accuracy, report["support"]])
    for avg in averages:
        rows.append([AVERAGE_NAMES[avg], report[avg]["precision"], report[avg]["recall"], report[avg]["f1"],
                     report["support"]])
    return rows


def format_table(report: dict, first_column: str, averages: Sequence[str], accuracy: float | None = None) -> str:
    """The text table of table_rows, a blank line between the classes and the summary rows."""
    rows = table_rows(report, averages, accuracy)
    width = max(12, *(len(row[0]) for row in rows))
    lines = [f"{first_column:>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for i, (name, *values, support) in enumerate(rows):
        if i == len(report["classes"]):
            lines.append("")
        cells = " ".join(f"{'':>9}" if v is None else f"{v:9.4f}" for v in values)
        lines.append(f"{name:>{width}} {cells} {support:9d}")
    if len(rows) == len(report["classes"]):
        lines.append("")
    if report.get("not_in_macro_avg") and "macro_avg" in averages:
        kind = {"entity": "entity types", "label": "labels"}.get(first_column, "classes")
        lines.append(f"macro avg: over the {kind} that occur (gold or predicted); left out: "
                     f"{', '.join(report['not_in_macro_avg'])}")
    return "\n".join(lines)


def classification_report(confusion: torch.Tensor, label_names: Sequence[str]) -> tuple[dict, str]:
    """Per-class precision/recall/F1/support and the confusion matrix (rows = true, cols = predicted)."""
    cm = confusion.long().cpu()
    report = per_class_report(cm.diag(), cm.sum(0), cm.sum(1), label_names)
    report["accuracy"] = int(cm.diag().sum()) / max(report["support"], 1)
    report["labels"] = list(label_names)
    report["confusion_matrix"] = cm.tolist()
    text = format_table(report, "", ("macro_avg", "weighted_avg"), accuracy=report["accuracy"])
    names = report["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [text, "", "confusion matrix (rows = true, columns = predicted):",
             f"{'':>{width}} " + " ".join(f"{n[:9]:>9}" for n in names)]
    lines += [f"{name:>{width}} " + " ".join(f"{v:9d}" for v in row) for name, row in zip(names, report["confusion_matrix"])]
    return report, "\n".join(lines)


def entity_report(counts: torch.Tensor, types: Sequence[str]) -> tuple[dict, str]:
    """Per-type and micro/macro precision/recall/F1/support from a [3, n_types] tp/pred/gold tensor."""
    tp, pred, gold = counts.cpu()
    report = per_class_report(tp, pred, gold, types)
    del report["weighted_avg"]
    report["types"] = list(types)
    return report, format_table(report, "entity", ("micro_avg", "macro_avg"))


def multilabel_report(counts: dict[str, torch.Tensor], label_names: Sequence[str], threshold: float
                      ) -> tuple[dict, str]:
    """Per-label and micro/macro precision/recall/F1/support, subset accuracy and Hamming loss from
    MultiLabelCounts' "counts" state."""
    report = per_class_report(counts["tp"], counts["pred"], counts["gold"], label_names)
    del report["weighted_avg"]
    examples = max(int(counts["examples"]), 1)
    report |= {"labels": list(label_names), "threshold": threshold, "examples": examples,
               "subset_accuracy": int(counts["exact"]) / examples,
               "hamming_loss": float(hamming_loss(counts["tp"].cpu(), counts["pred"].cpu(), counts["gold"].cpu(),
                                                  examples))}
    text = format_table(report, "label", ("micro_avg", "macro_avg"))
    text += (f"\n\n{examples} examples, threshold {threshold:g}: subset accuracy {report['subset_accuracy']:.4f}, "
             f"Hamming loss {report['hamming_loss']:.4f}")
    return report, text


def calibration_report(bins: torch.Tensor) -> tuple[dict, str]:
    """ECE and per-bin examples / mean confidence / accuracy from Calibration's [3, n_bins] "bins" state
    (equal-width confidence bins over [0, 1]; empty bins have null means)."""
    count, confidence, correct = bins.double().cpu()
    n_bins, total = len(count), max(float(count.sum()), 1.0)
    mean = lambda sums: [float(s / c) if c > 0 else None for s, c in zip(sums, count)]  # noqa: E731
    report = {
        "n_bins": n_bins,
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "count": [int(c) for c in count],
        "confidence": mean(confidence),
        "accuracy": mean(correct),
        "ece": float(expected_calibration_error(confidence, correct, total)),
    }
    lines = [f"calibration (softmax of the outputs, {n_bins} equal-width confidence bins): ECE {report['ece']:.4f}",
             f"{'confidence bin':>14} {'confidence':>10} {'accuracy':>9} {'examples':>9}"]
    for i in range(n_bins):
        if report["count"][i]:
            lines.append(f"{report['edges'][i]:>6.3f}-{report['edges'][i + 1]:<7.3f} {report['confidence'][i]:10.4f} "
                         f"{report['accuracy'][i]:9.4f} {report['count'][i]:9d}")
    return report, "\n".join(lines)
