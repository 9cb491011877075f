"""Multi-seed sweep report: group a sweep's runs by their overrides minus the seed, then mean ± std
and a t-distribution 95% CI per metric, configs ranked, best vs runner-up tested across seeds.

    python -m tunelab.report outputs/<task>/multiruns/<date_time>     # writes report.{md,csv,json} there
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tunelab import plots, tracking
from tunelab import run_layout as layout
from tunelab.errors import ConfigError
from tunelab.results import (Group, Run, canonical_override, check_comparable_losses, group_runs, load_runs,
                             runs_monitor, unfinished_jobs, varying_overrides)
from tunelab.significance import check_alpha, compare_over_seeds, describe, fmt, fmt_p, seed_notes
from tunelab.sweeps import job_name

log = logging.getLogger(__name__)


# ---- the report --------------------------------------------------------------------------------
def build_report(sweep_dir: Path, metric: str | None = None, alpha: float = 0.05,
                 test: str = "welch", runs: list[Run] | None = None) -> dict[str, Any]:
    """Groups, stats and ranking of a sweep as a JSON-able dict (what report.json holds)."""
    runs = load_runs(sweep_dir) if runs is None else runs
    if not runs:
        raise ConfigError(f"no finished runs (metrics.json) under {sweep_dir}; pass a sweep dir from outputs/*/multiruns/.")
    if metric is not None:
        _require_logged(metric, runs)
    else:
        metric = _tested_metric(runs)
    metric, mode = runs_monitor(runs, metric)
    _require_logged(metric, runs)
    groups = group_runs(runs)
    check_comparable_losses(groups, metric)
    metrics = sorted({k for r in runs for k in r.metrics if k.startswith(("val/", "test/"))})
    for g in groups:
        g.stats = {m: describe(list(g.values(m).values())) for m in metrics if g.values(m)}
    sign = -1 if mode == "max" else 1
    score = {id(g): (g.stats[metric].mean * sign) if metric in g.stats else math.inf for g in groups}
    groups.sort(key=lambda g: score[id(g)])
    best = groups[0]
    ranked, rank = [], 1
    for i, g in enumerate(groups):
        if i and not _tied(score[id(g)], score[id(groups[i - 1])]):
            rank = i + 1  # tied configs share a rank: none of them ranks above the others
        ranked.append({
            "rank": rank, "config": g.label, "overrides": list(g.config), "n": g.n_seeds, "n_runs": len(g.runs),
            "seeds": sorted({r.seed for r in g.runs if r.seed is not None}),
            "runs": [str(r.dir.relative_to(sweep_dir)) for r in g.runs],
            "stats": {m: vars(s) for m, s in g.stats.items()},
            "vs_best": compare_over_seeds(best.values(metric), g.values(metric)) if i else {},
        })
    comparison = None
    if len(groups) > 1:
        a, b = best.values(metric), groups[1].values(metric)
        differs_by = "paired_p" if test == "paired" else "welch_p"
        comparison = {"metric": metric, "best": best.label, "runner_up": groups[1].label,
                      "delta": _mean(a) - _mean(b), **compare_over_seeds(a, b), "differs_by": differs_by, "alpha": alpha,
                      "tied": _tied(score[id(best)], score[id(groups[1])])}
        p = comparison[differs_by]
        comparison["differs"] = None if p is None else bool(p < alpha)
        if p is None:  # what the verdict says instead of a p-value
            comparison["no_test"] = "needs ≥ 2 seeds per config" if min(len(a), len(b)) < 2 else "the values do not vary"
    total, missing = unfinished_jobs(sweep_dir)
    notes = _notes(runs, groups, metric, total, missing)
    return {"sweep_dir": str(sweep_dir), "metric": metric, "mode": mode, "n_runs": len(runs),
            "jobs": None if not total else {"total": total, "finished": total - len(missing), "not_finished": [
                {"job": job.name, "overrides": o} for job, o in missing]},
            "configs": ranked, "best_vs_runner_up": comparison, "notes": notes}


def _tied(a: float, b: float) -> bool:
    # means of float32 metrics summed in different orders: equal up to rounding
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _notes(runs: list[Run], groups: list[Group], metric: str, total: int,
           missing: list[tuple[Path, list[str]]]) -> list[str]:
    """What the table alone does not show: jobs that did not finish, a test metric used for choosing,
    configs with repeated, fewer or too few seeds."""
    notes = []
    if missing:
        # label a job by what sets it apart from the sweep's other jobs, finished or not (loss=mse,seed=1)
        finished = [[canonical_override(o) for o in r.overrides] for r in runs]
        labels = varying_overrides(finished + [o for _, o in missing])[len(runs):]
        jobs = [f"{job.name} ({label or job_name(o) or 'no overrides'})" for (job, o), label in zip(missing, labels)]
        notes.append(f"{total - len(missing)} of {total} jobs finished; not finished: {'; '.join(jobs)}. "
                     f"The table covers the finished ones.")
    if metric.startswith("test/"):
        val = layout.at_stage(metric, "val")
        instead = (f"rank by {val} and read {metric} as the estimate" if any(val in r.metrics for r in runs) else
                   f"these runs tested trained models (eval.py) and logged no {val}: choose models on their "
                   f"training runs' {val}")
        notes.append(f"Ranked by {metric}: choosing among configs by a test metric biases the winner's test score "
                     f"(it is optimistic); {instead}.")
    for g in groups:
        for seed, repeated in sorted((s, rs) for s, rs in g.by_seed().items() if len(rs) > 1):
            jobs = ", ".join(r.dir.name for r in repeated)
            notes.append(f"`{g.label}` ran seed {seed} {len(repeated)} times (jobs {jobs}): a repeated seed repeats "
                         "one initialisation and data order, so it counts as one seed, valued at the mean of its runs.")
    return notes + seed_notes({g.label: g.n_seeds for g in groups})


def _tested_metric(runs: list[Run]) -> str | None:
    """The default ranking metric's test counterpart when the runs logged test metrics only (eval.py runs of
    checkpoints), else None (the monitored val metric)."""
    default = runs_monitor(runs)[0]
    tested = layout.at_stage(default, "test")
    logged = any(default in r.metrics for r in runs) or not any(tested in r.metrics for r in runs)
    return None if logged else tested


def _require_logged(metric: str, runs: list[Run]) -> None:
    if not any(metric in r.metrics for r in runs):
        known = sorted({k for r in runs for k in r.metrics if k.startswith(("val/", "test/"))})
        if not known:
            raise ConfigError(f"no run logged {metric} or any val/ or test/ metric: did the sweep's jobs finish?")
        raise ConfigError(f"no run logged {metric}; pass --metric with one of {', '.join(known)}.")


def _mean(values: dict) -> float:
    return sum(values.values()) / len(values) if values else math.nan


def to_markdown(report: dict[str, Any], extra_metrics: list[str] = ()) -> str:
    metric = report["metric"]
    test_metric = layout.at_stage(metric, "test")
    shown = [m for m in dict.fromkeys([metric, test_metric, *extra_metrics])
             if any(m in c["stats"] for c in report["configs"])]
    comp = report["best_vs_runner_up"]
    p_key = (comp or {}).get("differs_by", "welch_p")
    # the rank metric and its test counterpart with their CIs, then any extra metrics (mean ± std)
    head = ["rank", "config", "seeds"]
    for i, m in enumerate(shown):
        head += [f"{m} mean ± std", f"{m} 95% CI"] if i < 2 else [f"{m} mean ± std"]
    head.append("paired p vs #1" if p_key == "paired_p" else "Welch p vs #1")
    lines = [
        f"Sweep `{report['sweep_dir']}`: {report['n_runs']} runs, {len(report['configs'])} configs, ranked by "
        f"{metric} ({'higher' if report['mode'] == 'max' else 'lower'} is better).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    most = max(c["n"] for c in report["configs"])
    for i, c in enumerate(report["configs"]):
        stats = c["stats"]
        cells = [str(c["rank"]), c["config"], f"{c['n']}{'†' if c['n'] < most else ''}"]
        for j, m in enumerate(shown):
            s = stats.get(m)
            cells.append(f"{fmt(s['mean'])} ± {fmt(s['std'])}" if s else "")
            if j < 2:
                cells.append(f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" if s else "")
        cells.append(fmt_p(c["vs_best"].get(p_key)) if i else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("notes"):
        lines += ["", *(f"- {note}" for note in report["notes"])]
    if comp and comp["tied"]:
        tied = [f"`{c['config']}`" for c in report["configs"] if c["rank"] == 1]
        mean = report["configs"][0]["stats"][metric]["mean"]
        lines += ["", f"{', '.join(tied[:-1])} and {tied[-1]} tie on {metric} (mean {fmt(mean)}): no config is "
                      "best."]
    elif comp:
        verdict = {True: f"**the best differs from the runner-up** (p < {comp['alpha']})",
                   False: f"the best is **not distinguishable** from the runner-up (p ≥ {comp['alpha']})",
                   None: f"no test possible ({comp.get('no_test')})"}[comp["differs"]]
        lines += ["", f"Best `{comp['best']}` vs runner-up `{comp['runner_up']}` on {comp['metric']}: "
                      f"Δ = {comp['delta']:+.4f}, Welch t-test p = {fmt_p(comp['welch_p'])}, paired by seed "
                      f"p = {fmt_p(comp['paired_p'])} (n = {comp['n_paired']}): {verdict}."]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path, metric: str | None = None, alpha: float = 0.05, test: str = "welch",
                 extra_metrics: list[str] = (), runs: list[Run] | None = None) -> tuple[dict[str, Any], str]:
    """Build the report and write report.md, report.csv (one row per config and metric), report.json
    and runs.csv (one row per run)."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir) if runs is None else runs
    report = build_report(sweep_dir, metric, alpha, test, runs)
    for extra in extra_metrics:  # a mistyped --metrics name would otherwise drop its column silently
        _require_logged(extra, runs)
    markdown = to_markdown(report, list(extra_metrics))
    (sweep_dir / layout.REPORT_MD).write_text(markdown)
    (sweep_dir / layout.REPORT_JSON).write_text(json.dumps(report, indent=2))
    with (sweep_dir / layout.REPORT_CSV).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "config", "metric", "n", "mean", "std", "ci95_low", "ci95_high", "seeds"])
        for c in report["configs"]:
            for m, s in sorted(c["stats"].items()):
                writer.writerow([c["rank"], c["config"], m, s["n"], s["mean"], s["std"], s["ci_low"], s["ci_high"],
                                 " ".join(map(str, c["seeds"]))])
    _write_runs_csv(sweep_dir, report, runs)
    return report, markdown


def _write_runs_csv(sweep_dir: Path, report: dict[str, Any], runs: list[Run]) -> None:
    """runs.csv: one row per run (config, seed, optimizer, lr, every val/test metric), for pandas."""
    by_dir = {str(r.dir.relative_to(sweep_dir)): r for r in runs}
    metrics = sorted({m for c in report["configs"] for m in c["stats"]})
    with (sweep_dir / layout.RUNS_CSV).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "rank", "config", "seed", "optimizer", "lr", *metrics])
        for c in report["configs"]:
            for name in c["runs"]:
                run = by_dir[name]
                writer.writerow([name, c["rank"], c["config"], run.seed, run.optimizer, run.lr,
                                 *(run.metrics.get(m, "") for m in metrics)])


class SweepReport(Callback):
    """Hydra callback (conf/hydra/default.yaml): at the end of a multirun, write the report and the
    sweep plot into the sweep dir. Never fails the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs = load_runs(sweep_dir)
            report, markdown = write_report(sweep_dir, runs=runs)
            plots.plot_sweep(sweep_dir, runs=runs)
            log.info("sweep report (%s):\n%s", sweep_dir / layout.REPORT_MD, markdown)
            tracking.send_sweep(sweep_dir, runs, report)  # the W&B summary run of the sweep's group
        except Exception as err:  # noqa: BLE001 - the jobs are done; a report problem must not hide that
            log.warning("no sweep report for %s: %s (run python -m tunelab.report %s)", sweep_dir, err, sweep_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunelab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", help="rank by this metric (default: the optimized / val monitor metric)")
    parser.add_argument("--metrics", nargs="*", default=[], help="more metrics for the table (all are in report.csv)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--test", choices=["welch", "paired"], default="welch",
                        help="which p-value decides 'differs' (both are shown)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory; pass outputs/<task>/multiruns/<date_time>.", file=sys.stderr)
        return 2
    try:
        check_alpha(args.alpha)
        _, markdown = write_report(args.sweep_dir, args.metric, args.alpha, args.test, args.metrics)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown, end="")
    print(f"\nwrote {args.sweep_dir / layout.REPORT_MD}, {layout.REPORT_CSV}, {layout.REPORT_JSON}, {layout.RUNS_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
