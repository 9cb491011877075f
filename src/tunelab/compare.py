"""Configs against a chosen baseline, across runs and sweeps: each config's test metric over seeds and
its difference to the baseline with a paired bootstrap over test examples (docs/COMPARE.md).

    python -m tunelab.compare BASELINE OTHER...            # run or sweep dirs; BASELINE holds one config
    python -m tunelab.compare SWEEP [MORE...] --baseline loss=cross_entropy

Runs pair by seed and test examples by the `index` of their predictions.jsonl; the metric is recomputed
from those files. Writes compare_<metric>.{md,csv,json,png} into the first dir given (or --out DIR).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tunelab import plots
from tunelab.errors import ConfigError
from tunelab.monitoring import monitor
from tunelab.prediction_metrics import ExampleMetric
from tunelab.prediction_files import check_same_test_set, load_predictions
from tunelab.results import (Group, Run, canonical_override, check_comparable_losses, group_runs, label_groups,
                             load_runs)
from tunelab.run_layout import PREDICTIONS_FILE
from tunelab.significance import (RESAMPLES, check_alpha, compare_over_seeds, describe, fmt, fmt_p, holm,
                                  paired_bootstrap, seed_notes)
from tunelab.sweeps import override_key


@dataclass
class Arm:
    """One config: its runs, their predictions, per-example metric features and the metric, each by seed."""

    group: Group
    runs: dict[int, Run] = field(default_factory=dict)
    records: dict[int, list[dict]] = field(default_factory=dict)
    features: dict[int, np.ndarray] = field(default_factory=dict)  # computed once, reused by every pairing
    values: dict[int, float] = field(default_factory=dict)


# ---- which runs face which baseline ------------------------------------------------------------
def select_groups(paths: list[Path], baseline: list[str] | None) -> tuple[Group, list[Group]]:
    """(baseline, others): the config carrying every `baseline` override among all runs, or else the
    one config of the first path against the configs of the other paths."""
    loaded = []
    for path in paths:
        if not Path(path).is_dir():
            raise ConfigError(f"{path} is not a directory; pass run dirs or sweep dirs under outputs/.")
        runs = load_runs(path)
        if not runs:
            raise ConfigError(f"no finished runs (metrics.json) under {path}; pass a run dir or a sweep dir.")
        loaded.append(runs)
    if baseline:
        groups = group_runs([run for runs in loaded for run in runs])
        wanted = _settings(baseline)
        matches = [g for g in groups if wanted.items() <= _settings(g.config).items()]
        if len(matches) != 1:
            found = "no config" if not matches else f"{len(matches)} configs ({', '.join(g.label for g in matches)})"
            raise ConfigError(f"--baseline {' '.join(baseline)} matches {found}; configs are: "
                              f"{'; '.join(g.label for g in groups)}. Name overrides one config carries.")
        return matches[0], [g for g in groups if g is not matches[0]]
    first = group_runs(loaded[0])
    if len(first) > 1:
        raise ConfigError(f"{paths[0]} holds {len(first)} configs ({'; '.join(g.label for g in first)}); "
                          "pick the baseline with --baseline KEY=VALUE.")
    others = [g for runs in loaded[1:] for g in group_runs(runs)]
    if not others:
        raise ConfigError("nothing to compare: pass OTHER run / sweep dirs after the baseline, or a sweep dir "
                          "with --baseline KEY=VALUE.")
    groups = label_groups([first[0], *others])
    labels = [g.label for g in groups]
    for i, g in enumerate(groups):  # the same config from different dirs: tell them apart by position
        if labels.count(g.label) > 1:
            g.label = f"{g.label} [{i + 1}]"
    return groups[0], groups[1:]


def _settings(overrides: Iterable[str]) -> dict[str, str]:
    """{key: value} of overrides, values spelled as Run.config spells them (`+loss=focal` -> {"loss": "focal"},
    `optimizer.lr=2e-3` -> {"optimizer.lr": "0.002"})."""
    return {override_key(o): canonical_override(o).split("=", 1)[-1] for o in overrides}


def pick_metric(groups: list[Group], requested: str | None) -> tuple[str, ExampleMetric]:
    """(test metric name, how to compute it) for runs that must share their task; default: the test
    counterpart of the metric the runs picked checkpoints on."""
    from tunelab.tasks import TASKS, get_task

    runs = [r for g in groups for r in g.runs]
    for run in runs:
        if run.saved is None or "task" not in (run.saved.get("data") or {}):
            raise ConfigError(f"{run.dir} has no .hydra/config.yaml naming data.task; compare runs of train.py / eval.py.")
    tasks = {str(r.saved.data.task) for r in runs}
    if len(tasks) > 1:
        raise ConfigError(f"the runs solve different tasks ({', '.join(sorted(tasks))}); compare runs of one task.")
    task = get_task(tasks.pop())
    available = task.prediction_metrics()
    if not available:
        comparable = ", ".join(t.name for t in TASKS.values() if t.prediction_metrics())
        raise ConfigError(f"{task.name} runs write no {PREDICTIONS_FILE} to compare; compare runs of {comparable}.")
    if requested is None:
        monitored = {monitor(r.saved)[0] for r in runs}
        if len(monitored) > 1:
            raise ConfigError(f"the runs pick checkpoints on different metrics ({', '.join(sorted(monitored))}); "
                              "pass --metric to compare them on one.")
        requested = monitored.pop()
    elif "/" in requested and not requested.startswith("test/"):
        # predictions.jsonl exists for the test split only: another split's name would silently mean test
        raise ConfigError(f"--metric {requested}: the comparison recomputes test metrics from {PREDICTIONS_FILE} "
                          f"(written for the test split only); pass --metric test/{requested.rsplit('/', 1)[-1]}.")
    leaf = requested.rsplit("/", 1)[-1]
    check_comparable_losses(groups, f"test/{leaf}")
    if leaf not in available:
        raise ConfigError(f"test/{leaf} cannot be recomputed from {PREDICTIONS_FILE} of {task.name} runs; pass "
                          f"--metric with one of {', '.join(sorted(available))}.")
    return f"test/{leaf}", available[leaf]


# ---- loading and checking the predictions ------------------------------------------------------
def load_arm(group: Group, metric: ExampleMetric) -> Arm:
    arm = Arm(group)
    for run in group.runs:
        if run.seed is None:
            raise ConfigError(f"{run.dir} records no seed to pair it by; compare runs of train.py / eval.py.")
        if run.seed in arm.runs:
            raise ConfigError(f"{arm.runs[run.seed].dir} and {run.dir} are both {group.label} with seed {run.seed}; "
                              "pass the dirs of one of them.")
        arm.runs[run.seed] = run
        arm.records[run.seed] = load_predictions(run.dir)
        arm.features[run.seed] = metric.features(arm.records[run.seed])
        arm.values[run.seed] = metric.unweighted(arm.features[run.seed])
    return arm


# ---- the comparison ----------------------------------------------------------------------------
def build_comparison(paths: list[Path], baseline: list[str] | None = None, metric: str | None = None,
                     resamples: int = RESAMPLES, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Everything compare_<metric>.json holds: per config the metric over seeds, the difference to the
    baseline with its paired bootstrap CI and p-value, Holm's adjustment and the paired t-test."""
    base_group, other_groups = select_groups([Path(p) for p in paths], baseline)
    name, example_metric = pick_metric([base_group, *other_groups], metric)
    base, others = load_arm(base_group, example_metric), [load_arm(g, example_metric) for g in other_groups]
    reference = next(iter(base.runs.values())), next(iter(base.records.values()))
    for arm in [base, *others]:
        for s, run in arm.runs.items():
            check_same_test_set(reference, (run, arm.records[s]))
    rows = [_row(base, None, example_metric, resamples, seed)]
    rows += [_row(arm, base, example_metric, resamples, seed) for arm in others]
    for row, p in zip(rows[1:], holm([r["p_bootstrap"] for r in rows[1:]])):
        row["p_holm"] = p
    return {"metric": name, "mode": "max" if example_metric.higher_is_better else "min",
            "baseline": base_group.label, "n_examples": len(reference[1]),
            "test_files": sorted({str(r.get("file")) for r in reference[1]}), "resamples": resamples,
            "bootstrap_seed": seed, "alpha": alpha, "configs": rows,
            "notes": seed_notes({r["config"]: r["n"] for r in rows})}


def _row(arm: Arm, base: Arm | None, metric: ExampleMetric, resamples: int, seed: int) -> dict[str, Any]:
    stat = describe(list(arm.values.values()))
    row = {"config": arm.group.label, "baseline": base is None, "overrides": list(arm.group.config),
           "seeds": sorted(arm.runs), "runs": [str(r.dir) for r in arm.runs.values()],
           "values": {str(s): v for s, v in sorted(arm.values.items())}, **vars(stat)}
    if base is None:
        return row
    common = sorted(set(arm.runs) & set(base.runs), key=str)
    if not common:
        raise ConfigError(f"{arm.group.label} (seeds {sorted(arm.runs)}) and the baseline (seeds "
                          f"{sorted(base.runs)}) share no seed to pair; run the baseline's seeds.")
    pairs = [(arm.features[s], base.features[s]) for s in common]

    def difference(weights: np.ndarray) -> np.ndarray:  # mean over seeds of config - baseline
        return np.mean([metric.value(weights, ours) - metric.value(weights, theirs) for ours, theirs in pairs], 0)

    boot = paired_bootstrap(difference, len(pairs[0][0]), resamples, seed)
    t_test = compare_over_seeds(base.values, arm.values)
    return row | {"delta": boot.delta, "delta_ci_low": boot.ci_low, "delta_ci_high": boot.ci_high,
                  "p_bootstrap": boot.p_value, "p_paired_t": t_test["paired_p"], "p_welch": t_test["welch_p"],
                  "n_pairs": len(common)}


# ---- output ------------------------------------------------------------------------------------
def to_markdown(result: dict[str, Any]) -> str:
    better = "higher" if result["mode"] == "max" else "lower"
    others = [c for c in result["configs"] if not c["baseline"]]
    lines = [
        f"Test metric {result['metric']} ({better} is better), recomputed from {PREDICTIONS_FILE}: "
        f"{result['n_examples']} test examples; baseline `{result['baseline']}`.",
        f"Δ = config − baseline, averaged over the seeds both ran; Δ 95% CI: paired bootstrap over test examples "
        f"({result['resamples']:,} resamples, seed {result['bootstrap_seed']}); p: two-sided bootstrap p, Holm-"
        f"corrected over {len(others)} config(s); paired t: over seeds.",
        "",
        "| config | seeds | mean ± std | 95% CI (seeds) | paired seeds | Δ vs baseline | Δ 95% CI | p (bootstrap) "
        "| p (Holm) | p (paired t) |",
        "|" + "---|" * 10,
    ]
    most = max(c["n"] for c in result["configs"])
    for c in result["configs"]:
        cells = [c["config"] + (" (baseline)" if c["baseline"] else ""), f"{c['n']}{'†' if c['n'] < most else ''}",
                 f"{fmt(c['mean'])} ± {fmt(c['std'])}", f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"]
        if c["baseline"]:
            cells += ["—"] * 6
        else:
            cells += [str(c["n_pairs"]), f"{c['delta']:+.4f}",
                      f"[{c['delta_ci_low']:+.4f}, {c['delta_ci_high']:+.4f}]",
                      fmt_p(c["p_bootstrap"]), fmt_p(c["p_holm"]), fmt_p(c["p_paired_t"])]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("notes"):
        lines += ["", *(f"- {note}" for note in result["notes"])]
    differs = [c for c in others if c["p_holm"] is not None and c["p_holm"] < result["alpha"]]
    verdicts = [f"`{c['config']}` ({'better' if (c['delta'] > 0) == (result['mode'] == 'max') else 'worse'})"
                for c in differs]
    lines += ["", f"Differs from the baseline at α = {result['alpha']} after Holm: {', '.join(verdicts)}." if verdicts
              else f"No config differs from the baseline at α = {result['alpha']} after Holm."]
    return "\n".join(lines) + "\n"


def plot_differences(result: dict[str, Any], out: Path) -> Path:
    """Each config's Δ to the baseline with its bootstrap CI; 0 = no difference."""
    others = [c for c in result["configs"] if not c["baseline"]]
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.5 * len(others)))
    y = np.arange(len(others))
    deltas = np.array([c["delta"] for c in others])
    errors = [deltas - [c["delta_ci_low"] for c in others], [c["delta_ci_high"] for c in others] - deltas]
    ax.errorbar(deltas, y, xerr=errors, fmt="o", capsize=4)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, [f"{c['config']}  (Holm p {fmt_p(c['p_holm'])})" for c in others])
    ax.invert_yaxis()
    ax.locator_params(axis="x", nbins=5)
    ax.set(xlabel=f"Δ {result['metric']} (config − baseline)",
           title=f"vs {result['baseline']} (95% paired bootstrap CI)")
    return plots._save(plt, fig, out)


def write_comparison(result: dict[str, Any], out_dir: Path) -> list[Path]:
    stem = Path(out_dir) / f"compare_{result['metric'].rsplit('/', 1)[-1]}"
    md, table, js = stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".json")
    md.write_text(to_markdown(result))
    js.write_text(json.dumps(result, indent=2))
    columns = ["config", "baseline", "n", "mean", "std", "ci_low", "ci_high", "delta", "delta_ci_low",
               "delta_ci_high", "p_bootstrap", "p_holm", "p_paired_t", "p_welch", "n_pairs", "seeds"]
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", *columns])
        for c in result["configs"]:
            writer.writerow([result["metric"], *(c.get(k, "") for k in columns[:-1]), " ".join(map(str, c["seeds"]))])
    return [md, table, js, plot_differences(result, stem.with_suffix(".png"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunelab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep dirs; without --baseline the first is it")
    parser.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                        help="the baseline: the config carrying this override among all runs (repeat to narrow)")
    parser.add_argument("--metric", help="acc, f1_macro, ece, brier, nll | pearson, spearman, mse, mae | f1, "
                                         "precision, recall (default: the test side of the monitored metric)")
    parser.add_argument("--out", type=Path, help="where to write (default: the first dir given)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    try:
        if args.resamples < 1:
            raise ConfigError(f"--resamples={args.resamples} must be a positive integer (10000 gives stable CIs).")
        check_alpha(args.alpha)
        result = build_comparison(args.paths, args.baseline, args.metric, args.resamples, args.seed, args.alpha)
        out = args.out or args.paths[0]
        out.mkdir(parents=True, exist_ok=True)
        written = write_comparison(result, out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(to_markdown(result), end="")
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
