"""PNG plots read from what a run logs to disk (csv/metrics.csv, metrics.json, test_report.json), so
they work with any logger, W&B offline included.

    python -m tunelab.plots <run dir>     # learning_curves.png, confusion_matrix.png, reliability_diagram.png
    python -m tunelab.plots <sweep dir>   # metric_vs_lr.png (+ each job's plots with --runs)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

from tunelab import run_layout as layout
from tunelab.monitoring import monitor
from tunelab.results import load_runs, runs_monitor, saved_config

log = logging.getLogger(__name__)


def _pyplot():
    """matplotlib with the file-only Agg backend (no display on clusters), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return out


def _read_csv_metrics(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} from the CSVLogger file (each row holds only what was logged then)."""
    path = run_dir / layout.CSV_DIR / layout.CSV_METRICS
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if not path.is_file():
        return series
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series[key].append((float(step), float(value)))
    return series


def _monitor_metric(run_dir: Path, series: dict) -> str | None:
    """The run's monitored metric (val/acc, val/spearman, ...) when it logged it."""
    cfg = saved_config(run_dir)
    name = monitor(cfg)[0] if cfg is not None else None
    return name if name in series else None


def plot_learning_curves(run_dir: Path) -> Path | None:
    """Train/val loss and the monitor metric against the optimizer step."""
    run_dir = Path(run_dir)
    series = _read_csv_metrics(run_dir)
    losses = [k for k in ("train/loss_step", "train/loss_epoch", "val/loss") if series.get(k)]
    if not losses:
        return None
    monitor = _monitor_metric(run_dir, series)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if monitor else 1, figsize=(11 if monitor else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key in losses:
        steps, values = zip(*series[key])
        style = {"train/loss_step": dict(alpha=0.5, lw=1)}.get(key, dict(marker="o"))
        ax.plot(steps, values, label=key, **style)
    ax.set(xlabel="step", ylabel="loss", title="loss")
    ax.legend()
    if monitor:
        ax = axes[0][1]
        for key in (monitor, monitor.replace("val/", "train/", 1)):
            if series.get(key):
                steps, values = zip(*series[key])
                ax.plot(steps, values, marker="o", label=key)
        ax.set(xlabel="step", ylabel=monitor.split("/")[-1], title=monitor)
        ax.legend()
    fig.suptitle(f"{run_dir.parent.name}/{run_dir.name}")
    return _save(plt, fig, run_dir / layout.LEARNING_CURVES)


def plot_confusion_matrix(run_dir: Path) -> Path | None:
    """The test confusion matrix (rows = true, columns = predicted) from test_report.json."""
    run_dir = Path(run_dir)
    path = run_dir / layout.TEST_REPORT_JSON
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    matrix, labels = report.get("confusion_matrix"), report.get("labels")
    if not matrix or not labels or len(labels) > 50:  # a matrix of over 50 classes is unreadable
        return None
    plt = _pyplot()
    size = max(4, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix (n={report.get('support', '?')})")
    return _save(plt, fig, run_dir / layout.CONFUSION_MATRIX)


def plot_reliability_diagram(run_dir: Path) -> Path | None:
    """Test accuracy against confidence per confidence bin (test_report.json's "calibration"), with the
    diagonal of perfect calibration and the share of examples per bin."""
    run_dir = Path(run_dir)
    path = run_dir / layout.TEST_REPORT_JSON
    calibration = json.loads(path.read_text()).get("calibration") if path.is_file() else None
    if not calibration or not sum(calibration["count"]):
        return None
    edges, count = calibration["edges"], calibration["count"]
    filled = [i for i, c in enumerate(count) if c]
    lows, widths = [edges[i] for i in filled], [edges[i + 1] - edges[i] for i in filled]
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(lows, [calibration["accuracy"][i] for i in filled], widths, align="edge", edgecolor="black",
           label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot([calibration["confidence"][i] for i in filled], [calibration["accuracy"][i] for i in filled], "o",
            color="red", label="(mean confidence, accuracy)")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"test reliability (ECE {calibration['ece']:.4f}, {calibration['n_bins']} bins)")
    ax.legend(loc="upper left", fontsize="small")
    hist.bar(lows, [count[i] / sum(count) for i in filled], widths, align="edge", edgecolor="black")
    hist.set(xlabel="confidence (top-label softmax probability)", ylabel="share of examples")
    return _save(plt, fig, run_dir / layout.RELIABILITY_DIAGRAM)


def write_run_plots(run_dir: Path) -> list[Path]:
    """All plots of one run. Called at the end of every run: a plotting problem only logs a warning."""
    written = []
    for plot in (plot_learning_curves, plot_confusion_matrix, plot_reliability_diagram):
        try:
            path = plot(Path(run_dir))
        except Exception as err:  # noqa: BLE001 - a plot must never fail a finished training run
            log.warning("%s failed for %s: %s", plot.__name__, run_dir, err)
            continue
        if path is not None:
            written.append(path)
    return written


def plot_sweep(sweep_dir: Path, metric: str | None = None, runs: list | None = None) -> Path | None:
    """Metric vs learning rate, one line per optimizer, mean over seeds with ±1 std error bars
    (`runs`: the sweep's results.load_runs, when the caller has them already)."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir) if runs is None else runs
    if not runs:
        return None
    metric = runs_monitor(runs, metric)[0]
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        value = run.metrics.get(metric)
        if run.lr is None or value is None:
            continue
        points[run.optimizer or "?"][run.lr].append(value)
    if not points:
        return None
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for optimizer, by_lr in sorted(points.items()):
        lrs = sorted(by_lr)
        means = [float(np.mean(by_lr[lr])) for lr in lrs]
        stds = [float(np.std(by_lr[lr], ddof=1)) if len(by_lr[lr]) > 1 else 0.0 for lr in lrs]
        n = max(len(v) for v in by_lr.values())
        ax.errorbar(lrs, means, yerr=stds, marker="o", capsize=4, label=f"{optimizer} (n≤{n})")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=metric, title=f"{metric} vs lr (mean ± std over seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(plt, fig, sweep_dir / f"{metric.replace('/', '_')}_vs_lr.png")


def is_sweep_dir(path: Path) -> bool:
    return (path / layout.MULTIRUN_YAML).is_file() or (path / layout.RESULTS_FILE).is_file() or (
        not (path / layout.METRICS_FILE).is_file() and any(path.glob(f"*/{layout.METRICS_FILE}"))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunelab.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run dir (has metrics.json) or a sweep dir (has job dirs)")
    parser.add_argument("--metric", help="sweep plot metric (default: the runs' optimized/monitor metric)")
    parser.add_argument("--runs", action="store_true", help="for a sweep dir: also plot every job")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        print(f"error: {args.path} is not a directory; pass a run dir or a sweep dir under outputs/.", file=sys.stderr)
        return 2
    if is_sweep_dir(args.path):
        written = [p for p in [plot_sweep(args.path, args.metric)] if p]
        if args.runs:
            for metrics_file in sorted(args.path.glob(f"*/{layout.METRICS_FILE}")):
                written += write_run_plots(metrics_file.parent)
    else:
        written = write_run_plots(args.path)
    if not written:
        print(f"error: nothing to plot in {args.path}; it needs csv/metrics.csv, test_report.json or job dirs.",
              file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
