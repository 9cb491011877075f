"""What the sweep report (tunelab.report) and tunelab.compare say besides their numbers: unfinished jobs,
configs with fewer, repeated or too few seeds, ties, ranking by a test metric or by a loss, one config
spelled two ways, the seeds Δ rests on, and the keys the W&B sweep summary gets. Synthetic run dirs."""

import csv
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from test_compare import classification_records, make_run
from tunelab import compare, report, results, sweeps, tracking

CLASSIFICATION = "data:\n  task: classification\n"


def write_job(root: Path, job: int, overrides: list[str], metrics: dict | None, config: str = CLASSIFICATION) -> Path:
    """A job dir as a multirun leaves it: .hydra/{config,overrides}.yaml, and metrics.json once it finished."""
    run = root / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(config)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "overrides": overrides}))
    return run


def sweep_of(root: Path, configs: dict[str, list[tuple[int, float]]], config: str = CLASSIFICATION) -> Path:
    """One job per (seed, val/acc) of each config; a config is one override, e.g. `optimizer=sgd`."""
    job = 0
    for override, runs in configs.items():
        for seed, acc in runs:
            metrics = {"val/acc": acc, "test/acc": acc - 0.05, "val/loss": 1 - acc, "val/nll": 1.5 - acc,
                       "test/loss": 1.1 - acc, "val/mse": 1 - acc}
            write_job(root, job, [override, f"seed={seed}"], metrics, config)
            job += 1
    return root


def three_seeds(*accs: float) -> list[tuple[int, float]]:
    return list(enumerate(accs))


# ---- 1. unfinished jobs, fewer seeds ------------------------------------------------------------
def test_unfinished_jobs_and_configs_with_fewer_seeds_are_named(tmp_path, capsys) -> None:
    sweep = sweep_of(tmp_path / "s", {"optimizer=adamw": three_seeds(0.80, 0.82, 0.84),
                                      "optimizer=sgd": three_seeds(0.90, 0.91, 0.92)})
    (sweep / "4" / "metrics.json").unlink()  # sgd seed 1 failed
    write_job(sweep, 6, ["optimizer=sgd", "seed=3"], None)  # started, never finished
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    line = "5 of 7 jobs finished; not finished: 4 (optimizer=sgd,seed=1); 6 (optimizer=sgd,seed=3)."
    assert line in out and line in (sweep / "report.md").read_text()
    rep = json.loads((sweep / "report.json").read_text())
    assert rep["jobs"] == {"total": 7, "finished": 5, "not_finished": [
        {"job": "4", "overrides": ["optimizer=sgd", "seed=1"]}, {"job": "6", "overrides": ["optimizer=sgd", "seed=3"]}]}
    # sgd ranks first on its 2 lucky seeds: flagged in the table and named under it
    assert "| 1 | optimizer=sgd | 2† |" in out and "| 2 | optimizer=adamw | 3 |" in out
    assert "† fewer seeds than the most-seeded config (3): `optimizer=sgd` (2); their means" in out
    assert any(note.startswith("5 of 7 jobs finished") for note in rep["notes"])


def test_a_complete_sweep_has_no_notes(tmp_path) -> None:
    rep, markdown = report.write_report(sweep_of(tmp_path / "s", {"optimizer=a": three_seeds(0.8, 0.82, 0.84),
                                                                   "optimizer=b": three_seeds(0.7, 0.71, 0.75)}))
    assert rep["notes"] == [] and rep["jobs"]["not_finished"] == [] and "†" not in markdown
    assert not any(line.startswith("- ") for line in markdown.splitlines())


# ---- 2. ranking by a loss across different losses ----------------------------------------------
def test_ranking_on_a_loss_across_different_losses_is_refused(tmp_path, capsys) -> None:
    sweep = sweep_of(tmp_path / "s", {"loss=cross_entropy": three_seeds(0.8, 0.82, 0.84),
                                      "loss=mse": three_seeds(0.7, 0.71, 0.75)})
    assert report.main([str(sweep), "--metric", "val/loss"]) == 2
    assert capsys.readouterr().err == (
        "error: val/loss is each config's own training loss and they train different ones (loss=cross_entropy, "
        "loss=mse), so its values are not comparable; pass --metric val/nll (a proper scoring rule every "
        "classification loss logs) or val/acc.\n")
    assert report.main([str(sweep), "--metric", "val/nll"]) == 0  # what the line names works
    # the same loss with other settings (focal's gamma) scores differently too: told apart by the saved config
    focal = "data:\n  task: classification\nloss:\n  _target_: tunelab.losses.FocalLoss\n  gamma: {}\n"
    other = tmp_path / "gamma"
    for job, gamma in enumerate([1.0, 1.0, 2.0, 2.0]):
        write_job(other, job, [f"loss.gamma={gamma}", f"seed={job % 2}"], {"val/loss": 0.3 + job / 100},
                  focal.format(gamma))
    with pytest.raises(ValueError, match=r"\(loss.gamma=1, loss.gamma=2\)"):
        report.build_report(other, metric="val/loss")


def test_regression_names_its_loss_free_metrics(tmp_path) -> None:
    regression = "data:\n  task: regression\n"
    sweep = sweep_of(tmp_path / "s", {"loss=mse": three_seeds(0.8, 0.82, 0.84),
                                      "loss=huber": three_seeds(0.7, 0.71, 0.75)}, regression)
    with pytest.raises(ValueError, match=r"pass --metric test/mse or test/spearman\.$"):
        report.build_report(sweep, metric="test/loss")
    assert report.build_report(sweep, metric="val/mse")["configs"][0]["config"] == "loss=mse"


def test_compare_refuses_a_loss_and_other_splits(tmp_path, capsys) -> None:
    sweep = prediction_sweep(tmp_path / "s", {"cross_entropy": [0, 1], "mse": [0, 1]})
    args = [str(sweep), "--baseline", "loss=cross_entropy", "--resamples", "20"]
    assert compare.main([*args, "--metric", "loss"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: test/loss is each config's own training loss") and err.count("\n") == 1
    assert "pass --metric test/nll (a proper scoring rule every classification loss logs) or test/acc." in err
    # predictions exist for the test split only: val/acc is refused, not computed as test/acc
    assert compare.main([*args, "--metric", "val/acc"]) == 2
    assert capsys.readouterr().err == ("error: --metric val/acc: the comparison recomputes test metrics from "
                                       "predictions.jsonl (written for the test split only); pass --metric test/acc.\n")
    assert compare.main([*args, "--metric", "test/acc"]) == 0


# ---- 3. the seeds Δ rests on --------------------------------------------------------------------
def prediction_sweep(root: Path, seeds: dict[str, list[int]], n: int = 120) -> Path:
    """Jobs with predictions.jsonl on one test set; each loss runs its own seeds."""
    job = 0
    for loss, loss_seeds in seeds.items():
        for seed in loss_seeds:
            correct = np.random.default_rng(100 * seed + job).random(n) < 0.8
            make_run(root / str(job), [f"loss={loss}", "model=tiny"], seed,
                     classification_records(correct, np.random.default_rng(0)))
            sweeps.append_result(root, {"job_dir": str(job), "seed": seed})
            job += 1
    return root


def test_compare_shows_the_paired_seeds_and_notes_fewer_seeds(tmp_path, capsys) -> None:
    sweep = prediction_sweep(tmp_path / "s", {"cross_entropy": [0, 1, 2], "focal": [1, 2, 3], "mse": [0, 1]})
    assert compare.main([str(sweep), "--baseline", "loss=cross_entropy", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| loss=focal \| 3 \| [^|]+\| [^|]+\| 2 \| [+-]", out, re.M)  # 3 seeds, 2 shared
    assert re.search(r"^\| loss=mse \| 2† \| [^|]+\| [^|]+\| 2 \| [+-]", out, re.M)
    assert "† fewer seeds than the most-seeded config (3): `loss=mse` (2)" in out
    assert "Fewer than 3 seeds: `loss=mse`." in out
    with (sweep / "compare_acc.csv").open() as f:
        rows = {row["config"]: row for row in csv.DictReader(f)}
    assert (rows["loss=focal"]["n"], rows["loss=focal"]["n_pairs"]) == ("3", "2")
    notes = json.loads((sweep / "compare_acc.json").read_text())["notes"]
    assert len(notes) == 2 and notes[0].startswith("† fewer seeds")


# ---- 4. one config, two spellings ---------------------------------------------------------------
@pytest.mark.parametrize("typed,canonical", [
    ("optimizer.lr=2e-3", "optimizer.lr=0.002"), ("optimizer.lr=0.0020", "optimizer.lr=0.002"),
    ("optimizer.lr=1E-5", "optimizer.lr=1e-05"), ("trainer.max_epochs=3.0", "trainer.max_epochs=3"),
    ("export=True", "export=true"), ("export=yes", "export=true"), ("+ckpt_path=NULL", "+ckpt_path=null"),
    ("loss=focal", "loss=focal"), ("tags=[a,b]", "tags=[a,b]"), ("~callbacks.ema", "~callbacks.ema"),
])
def test_override_values_are_spelled_one_way(typed, canonical) -> None:
    assert results.canonical_override(typed) == canonical


def test_one_config_typed_two_ways_is_one_config(tmp_path, capsys) -> None:
    sweep = tmp_path / "s"
    for job, (lr, seed, acc) in enumerate([("2e-3", 0, 0.80), ("0.002", 1, 0.82), ("0.0020", 2, 0.84),
                                           ("1e-3", 0, 0.70), ("0.001", 1, 0.71), ("1.0e-3", 2, 0.75)]):
        write_job(sweep, job, [f"optimizer.lr={lr}", f"seed={seed}"], {"val/acc": acc})
    rep = report.build_report(sweep)
    assert [(c["config"], c["n"]) for c in rep["configs"]] == [("optimizer.lr=0.002", 3), ("optimizer.lr=0.001", 3)]
    best, _ = compare.select_groups([sweep], ["optimizer.lr=2e-3"])  # the baseline as typed matches too
    assert best.label == "optimizer.lr=0.002" and len(best.runs) == 3


# ---- 5. repeated seeds --------------------------------------------------------------------------
def test_a_repeated_seed_counts_once_at_the_mean_of_its_runs(tmp_path) -> None:
    sweep = sweep_of(tmp_path / "s", {"optimizer=a": [(0, 0.80), (1, 0.82), (1, 0.86)],
                                      "optimizer=b": three_seeds(0.70, 0.71, 0.75)})
    rep, markdown = report.write_report(sweep)
    a = rep["configs"][0]
    assert (a["n"], a["n_runs"], a["seeds"]) == (2, 3, [0, 1])
    assert a["stats"]["val/acc"]["n"] == 2 and a["stats"]["val/acc"]["mean"] == pytest.approx((0.80 + 0.84) / 2)
    assert "| 1 | optimizer=a | 2† |" in markdown
    assert "`optimizer=a` ran seed 1 2 times (jobs 1, 2): a repeated seed repeats one initialisation and data " \
           "order, so it counts as one seed, valued at the mean of its runs." in markdown


# ---- 6. a test metric to rank by ----------------------------------------------------------------
def test_ranking_by_a_test_metric_warns(tmp_path, capsys) -> None:
    sweep = sweep_of(tmp_path / "s", {"optimizer=a": three_seeds(0.8, 0.82, 0.84),
                                      "optimizer=b": three_seeds(0.7, 0.71, 0.75)})
    warning = "Ranked by test/acc: choosing among configs by a test metric biases the winner's test score"
    assert report.main([str(sweep), "--metric", "test/acc"]) == 0
    assert warning in capsys.readouterr().out and warning in (sweep / "report.md").read_text()
    assert report.main([str(sweep)]) == 0 and warning not in capsys.readouterr().out


# ---- 7. ties ------------------------------------------------------------------------------------
def test_tied_configs_share_a_rank_and_no_best_is_named(tmp_path) -> None:
    accs = three_seeds(0.80, 0.82, 0.84)
    sweep = sweep_of(tmp_path / "s", {"optimizer=a": accs, "optimizer=b": accs, "optimizer=c": accs,
                                      "optimizer=d": three_seeds(0.70, 0.71, 0.75)})
    rep, markdown = report.write_report(sweep)
    assert [c["rank"] for c in rep["configs"]] == [1, 1, 1, 4] and rep["best_vs_runner_up"]["tied"] is True
    assert "`optimizer=a`, `optimizer=b` and `optimizer=c` tie on val/acc (mean 0.8200): no config is best." in markdown
    assert "Best `" not in markdown and "Δ = +0.0000" not in markdown
    clear = report.build_report(sweep_of(tmp_path / "t", {"optimizer=a": accs,
                                                           "optimizer=d": three_seeds(0.7, 0.71, 0.75)}))
    assert clear["best_vs_runner_up"]["tied"] is False and [c["rank"] for c in clear["configs"]] == [1, 2]


# ---- 8. too few seeds for a CI ------------------------------------------------------------------
def test_two_seed_intervals_are_flagged_not_clipped(tmp_path) -> None:
    rep, markdown = report.write_report(sweep_of(tmp_path / "s", {"optimizer=a": [(0, 0.2), (1, 0.9)],
                                                                   "optimizer=b": three_seeds(0.5, 0.51, 0.52)}))
    a = next(c for c in rep["configs"] if c["config"] == "optimizer=a")["stats"]["val/acc"]
    assert a["ci_low"] < 0 and a["ci_high"] > 1  # the t-interval as computed
    assert "Fewer than 3 seeds: `optimizer=a`. Their 95% CI is n/a with 1 seed and ±12.7 standard errors with 2" \
           in markdown and "not clipped" in markdown


# ---- 9. the W&B sweep summary -------------------------------------------------------------------
def test_the_wandb_summary_sends_the_documented_keys(tmp_path, monkeypatch) -> None:
    sent: dict = {}

    class FakeRun:
        summary: dict = {}

        def log(self, data: dict) -> None: ...
        def save(self, *args, **kwargs) -> None: ...
        def finish(self) -> None: sent.update(self.summary)

    def init(**kwargs) -> FakeRun:
        sent["group"] = kwargs["group"]
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Table=dict, Image=str))
    sweep = sweep_of(tmp_path / "2026-01-02_03-04-05_000006", {"optimizer=a": [(0, 0.8)], "optimizer=b": [(0, 0.7)]})
    rep, _ = report.write_report(sweep)
    from omegaconf import OmegaConf

    tracking._wandb_sweep(sweep, OmegaConf.create({"offline": True}), rep)
    assert sent.pop("group") == "2026-01-02_03-04-05_000006"  # the sweep dir's name, not its path
    keys = {"best", "metric", "runner_up", "delta", "welch_p", "paired_p", "n_paired", "differs_by", "alpha",
            "differs", "no_test", "tied"}
    assert set(sent) == keys and sent["differs_by"] == "welch_p" and sent["no_test"] == "needs ≥ 2 seeds per config"
    assert sent["best"] == "optimizer=a"
    tied = sweep_of(tmp_path / "tied", {"optimizer=a": [(0, 0.8)], "optimizer=b": [(0, 0.8)]})
    tracking._wandb_sweep(tied, OmegaConf.create({"offline": True}), report.write_report(tied)[0])
    assert sent["best"] == "optimizer=a | optimizer=b"  # both rank 1: neither is named above the other
    docs = " ".join((ROOT / "docs" / "TRACKING.md").read_text().split())
    summary = docs.split("- summary, ", 1)[1].split(" - files:", 1)[0]
    assert keys <= set(re.findall(r"`(\w+)`", summary))
    assert "named after the last part of the sweep dir: `<date_time>`" in docs


def test_the_summary_run_follows_the_loggers_of_the_sweeps_own_jobs(tmp_path, monkeypatch) -> None:
    """An eval.py sweep stands for its training runs (Run.saved is theirs): whether it gets a W&B summary run is
    decided by the loggers its own jobs had, not those its checkpoints were trained with."""
    from omegaconf import OmegaConf

    from tunelab.results import Run

    sent = []
    monkeypatch.setattr(tracking, "_wandb_sweep", lambda *args: sent.append(args))
    runs = []
    for job, own in (("0", "csv"), ("1", "csv")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        OmegaConf.save({"logger": {own: {"_target_": "x"}}}, tmp_path / job / ".hydra" / "config.yaml")
        trained = OmegaConf.create({"logger": {"wandb": {"_target_": "y"}}})  # what the checkpoints logged to
        runs.append(Run(tmp_path / job, [], {}, saved=trained))
    tracking.send_sweep(tmp_path, runs, {})
    assert sent == []
    OmegaConf.save({"logger": {"wandb": {"offline": True}}}, tmp_path / "1" / ".hydra" / "config.yaml")
    tracking.send_sweep(tmp_path, runs, {})
    assert len(sent) == 1
