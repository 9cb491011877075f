"""The multi-seed report and the plots on synthetic run dirs (no training): numbers checked by hand."""

import json
import math
import multiprocessing
from pathlib import Path

import pytest
from omegaconf import open_dict, read_write
from scipy import stats

from conftest import compose_cfg
from tunelab import plots, report, significance, sweeps
from tunelab.errors import ConfigError
from tunelab.monitoring import monitor
from tunelab.tasks import TASKS
from tunelab.run_layout import RESULTS_FILE
from tunelab.validation import validate

T_975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom (tables)
VAL_ACC = {"adamw": [0.80, 0.82, 0.84], "sgd": [0.70, 0.71, 0.75], "adamax": [0.60, 0.62, 0.64]}


def make_sweep(root: Path, values: dict[str, list[float]] = VAL_ACC, lrs: dict[str, float] | None = None) -> Path:
    """A sweep dir as a multirun leaves it: <job>/metrics.json with overrides, and results.jsonl."""
    job = 0
    for optimizer, accs in values.items():
        for seed, acc in enumerate(accs):
            run = root / str(job)
            run.mkdir(parents=True)
            overrides = [f"optimizer={optimizer}", f"seed={seed}", "model=tiny"]
            metrics = {"val/acc": acc, "test/acc": acc - 0.05, "val/loss": 1 - acc, "train/loss": 0.1}
            (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "overrides": overrides}))
            (run / ".hydra").mkdir()
            (run / ".hydra" / "config.yaml").write_text("data:\n  task: classification\n")
            lr = (lrs or {}).get(optimizer, 1e-4)
            sweeps.append_result(root, {"job_dir": str(job), "seed": seed, "lr": lr, "metrics": metrics,
                                        "choices": {"optimizer": optimizer}, "overrides": overrides})
            job += 1
    return root


def test_mean_std_and_t_confidence_interval_by_hand() -> None:
    s = significance.describe([0.80, 0.82, 0.84])
    assert s.n == 3 and s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    half = T_975_DF2 * 0.02 / math.sqrt(3)  # 0.04968
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    one = significance.describe([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_welch_and_paired_p_values_by_hand() -> None:
    a = dict(enumerate(VAL_ACC["adamw"]))
    b = dict(enumerate(VAL_ACC["sgd"]))
    # Welch: var_a/n = 0.0004/3, var_b/n = 0.0007/3, Welch-Satterthwaite df
    va, vb = 0.0004 / 3, 0.0007 / 3
    t = 0.10 / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert t == pytest.approx(5.2223, abs=1e-3) and df == pytest.approx(3.7231, abs=1e-3)
    # paired by seed: differences 0.10, 0.11, 0.09 -> mean 0.10, sd 0.01
    t_paired = 0.10 / (0.01 / math.sqrt(3))
    got = significance.compare_over_seeds(a, b)
    assert got["welch_p"] == pytest.approx(2 * stats.t.sf(t, df), rel=1e-6)
    assert got["paired_p"] == pytest.approx(2 * stats.t.sf(t_paired, 2), rel=1e-6)
    assert got["paired_p"] == pytest.approx(0.003317, abs=2e-5) and got["n_paired"] == 3
    assert significance.compare_over_seeds({0: 0.5}, {0: 0.4})["welch_p"] is None  # one seed each: no test


def test_report_groups_by_overrides_minus_seed_and_ranks(tmp_path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    rep, markdown = report.write_report(sweep)
    assert rep["metric"] == "val/acc" and rep["mode"] == "max" and rep["n_runs"] == 9
    assert [c["config"] for c in rep["configs"]] == ["optimizer=adamw", "optimizer=sgd", "optimizer=adamax"]
    best = rep["configs"][0]
    assert best["n"] == 3 and best["seeds"] == [0, 1, 2]
    assert best["stats"]["val/acc"]["mean"] == pytest.approx(0.82)
    assert best["stats"]["test/acc"]["mean"] == pytest.approx(0.77)
    comp = rep["best_vs_runner_up"]
    assert comp["best"] == "optimizer=adamw" and comp["runner_up"] == "optimizer=sgd"
    assert comp["delta"] == pytest.approx(0.10) and comp["differs"] is True
    assert "0.8200 ± 0.0200" in markdown and "[0.7703, 0.8697]" in markdown and "differs" in markdown
    for name in ("report.md", "report.csv", "report.json", "runs.csv"):
        assert (sweep / name).stat().st_size > 0
    rows = (sweep / "report.csv").read_text().splitlines()
    assert rows[0].startswith("rank,config,metric,n,mean,std,ci95_low,ci95_high")
    assert len(rows) == 1 + 3 * 3  # 3 configs x (val/acc, test/acc, val/loss)
    runs = (sweep / "runs.csv").read_text().splitlines()
    assert runs[0] == "run,rank,config,seed,optimizer,lr,test/acc,val/acc,val/loss" and len(runs) == 10


def test_report_ranks_lower_is_better_metrics_ascending(tmp_path) -> None:
    rep = report.build_report(make_sweep(tmp_path / "sweep"), metric="val/loss")
    assert rep["mode"] == "min" and rep["configs"][0]["config"] == "optimizer=adamw"


def test_close_configs_are_not_called_different(tmp_path) -> None:
    rep = report.build_report(make_sweep(tmp_path / "s", {"a": [0.80, 0.84, 0.82], "b": [0.81, 0.79, 0.83]}))
    assert rep["best_vs_runner_up"]["differs"] is False


def test_report_cli_and_its_one_line_errors(tmp_path, capsys) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    assert report.main([str(sweep), "--metrics", "val/loss"]) == 0
    assert "| 1 | optimizer=adamw | 3 |" in capsys.readouterr().out
    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main([str(sweep), "--metric", "val/nope"]) == 2
    assert "--metric" in capsys.readouterr().err
    assert report.main([str(sweep), "--metrics", "val/bogus"]) == 2  # not a column silently left out
    assert capsys.readouterr().err.startswith("error: no run logged val/bogus; pass --metric with one of ")
    assert report.main([str(sweep), "--alpha", "2"]) == 2  # as tunelab.compare: one check for both
    assert capsys.readouterr().err == "error: --alpha=2.0 must lie in (0, 1), e.g. 0.05.\n"


def test_no_test_verdict_names_its_reason(tmp_path) -> None:
    rep, markdown = report.write_report(make_sweep(tmp_path / "s", {"a": [0.8, 0.8], "b": [0.8, 0.8]}))
    assert rep["best_vs_runner_up"]["differs"] is None and rep["best_vs_runner_up"]["tied"] is True
    assert rep["best_vs_runner_up"]["no_test"] == "the values do not vary"
    assert "`optimizer=a` and `optimizer=b` tie on val/acc (mean 0.8000): no config is best." in markdown
    rep, markdown = report.write_report(make_sweep(tmp_path / "t", {"a": [0.8], "b": [0.7]}))
    assert "no test possible (needs ≥ 2 seeds per config)" in markdown


def _append_many(args) -> None:
    root, worker = args
    for i in range(50):
        sweeps.append_result(Path(root), {"worker": worker, "i": i, "pad": "x" * 5000})


def test_concurrent_appends_keep_every_line_whole(tmp_path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(str(tmp_path), w) for w in range(4)])
    lines = (tmp_path / RESULTS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # a torn line would not parse
    assert len(rows) == 200 and len({(r["worker"], r["i"]) for r in rows}) == 200


def test_plots_from_logged_files(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss_step,train/loss_epoch,val/loss,val/acc\n"
        "0,4,0.70,,,\n0,9,0.60,,,\n0,9,,0.65,0.62,0.70\n1,14,0.40,,,\n1,19,0.35,,,\n1,19,,0.38,0.45,0.80\n"
    )
    (run / "test_report.json").write_text(json.dumps(
        {"labels": ["negative", "positive"], "confusion_matrix": [[40, 10], [5, 45]], "support": 100}))
    written = plots.write_run_plots(run)
    assert sorted(p.name for p in written) == ["confusion_matrix.png", "learning_curves.png"]
    assert all(p.stat().st_size > 1000 for p in written)

    sweep = make_sweep(tmp_path / "sweep", lrs={"adamw": 1e-4, "sgd": 0.05, "adamax": 2e-4})
    assert plots.main([str(sweep)]) == 0
    assert (sweep / "val_acc_vs_lr.png").stat().st_size > 1000
    assert plots.main([str(tmp_path / "empty_dir_missing")]) == 2


def test_sweeper_direction_must_match_the_metric(tmp_path) -> None:
    """An optuna sweep maximizing a loss would search for the worst config: refused up front."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = compose_cfg(tmp_path, "hparams_search=optuna_random", "optimized_metric=val/loss")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=minimize"):
        validate(cfg)
    with open_dict(cfg):
        cfg.optimized_metric = None  # val/acc: maximize is right
    validate(cfg)


@pytest.mark.parametrize("task,metric,mode", [
    ("classification", None, ("val/acc", "max")), ("classification", "val/loss", ("val/loss", "min")),
    ("classification", "val/mcc", ("val/mcc", "max")), ("regression", None, ("val/spearman", "max")),
    ("regression", "val/mae", ("val/mae", "min")), ("token_classification", "val/acc", ("val/acc", "max")),
    ("causal_lm", None, ("val/perplexity", "min")), ("classification", "val/ece", ("val/ece", "min")),
    ("multilabel", None, ("val/f1_micro", "max")), ("multilabel", "val/hamming", ("val/hamming", "min")),
])
def test_monitor_is_the_optimized_metric_with_its_direction(task, metric, mode) -> None:
    assert monitor({"data": {"task": task}, "optimized_metric": metric}) == mode


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_logged_metric_can_be_optimized(task) -> None:
    """Each val/ metric a task logs has a direction, so optimized_metric, early stopping and reports accept it."""
    for name in ["loss", *TASKS[task].metrics(2)]:
        assert monitor({"data": {"task": task}, "optimized_metric": f"val/{name}"})[0] == f"val/{name}"
    if task == "regression":
        assert monitor({"data": {"task": task}, "optimized_metric": "val/pearson"}) == ("val/pearson", "max")


@pytest.mark.parametrize("metric,message", [
    ("test/acc", "optimized_metric=test/acc is not a validation metric; use val/acc."),
    ("val/nope", "val/nope is not a metric of classification runs; use one of val/acc, val/brier, val/ece, "
                 "val/f1_macro, val/f1_micro, val/loss, val/mcc, val/nll, val/precision, val/recall."),
])
def test_monitor_refuses_metrics_it_cannot_rank_by(metric, message) -> None:
    with pytest.raises(ConfigError) as err:
        monitor({"data": {"task": "classification"}, "optimized_metric": metric})
    assert str(err.value).startswith(message)
