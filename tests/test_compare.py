"""Significance against a baseline (tunelab.compare) on synthetic run dirs: metrics recomputed from
predictions.jsonl against reference implementations, bootstrap coverage, Holm by hand, errors, CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torchmetrics.classification import MulticlassCalibrationError

from tunelab import compare, prediction_metrics, sweeps
from tunelab.metrics import Calibration
from tunelab.significance import holm, paired_bootstrap, resample_weights

LABELS = ["negative", "positive"]
TEST_FILE = "/data/sst2/dev.tsv"


def classification_records(correct: np.ndarray, rng: np.random.Generator, file: str = TEST_FILE) -> list[dict]:
    """Binary predictions whose correctness is given; confidence in [0.5, 1)."""
    gold = rng.integers(0, 2, len(correct))
    records = []
    for i, (g, ok) in enumerate(zip(gold, correct)):
        pred = g if ok else 1 - g
        confidence = float(rng.uniform(0.5, 0.999))
        probs = {LABELS[pred]: confidence, LABELS[1 - pred]: 1 - confidence}
        records.append({"index": i, "file": file, "text": f"s{i}", "gold": LABELS[g], "pred": LABELS[pred],
                        "probs": probs, "confidence": confidence})
    return records


def make_run(root: Path, overrides: list[str], seed: int, records: list[dict], task: str = "classification",
             optimized_metric: str | None = None) -> Path:
    """A job dir as train.py leaves it: metrics.json, .hydra/config.yaml, predictions.jsonl."""
    root.mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps({"metrics": {"test/acc": 0.0},
                                                   "overrides": [*overrides, f"seed={seed}"]}))
    (root / ".hydra").mkdir()
    metric = f"optimized_metric: {optimized_metric}\n" if optimized_metric else ""
    (root / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n{metric}data:\n  task: {task}\n")
    (root / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def make_sweep(root: Path, accuracy: dict[str, float], seeds=(0, 1, 2), n: int = 300) -> Path:
    """One job per loss and seed; each loss is right on a share `accuracy[loss]` of shared examples."""
    job = 0
    for loss, acc in accuracy.items():
        for seed in seeds:
            rng = np.random.default_rng(0)  # the same gold labels in every job: one test set
            correct = np.random.default_rng(1000 * seed + job).random(n) < acc
            make_run(root / str(job), [f"loss={loss}", "model=tiny"], seed, classification_records(correct, rng))
            sweeps.append_result(root, {"job_dir": str(job), "seed": seed})
            job += 1
    return root


# ---- metrics from predictions ------------------------------------------------------------------
def test_classification_metrics_match_torchmetrics_and_hand_values() -> None:
    rng = np.random.default_rng(0)
    records = classification_records(rng.random(400) < 0.8, rng)
    m = prediction_metrics.CLASSIFICATION
    gold = torch.tensor([LABELS.index(r["gold"]) for r in records])
    probs = torch.tensor([[r["probs"][name] for name in LABELS] for r in records], dtype=torch.float64)
    correct = np.array([r["gold"] == r["pred"] for r in records])
    assert m["acc"](records) == pytest.approx(correct.mean())
    ece = MulticlassCalibrationError(2, n_bins=15, norm="l1")(probs, gold)
    assert m["ece"](records) == pytest.approx(float(ece), abs=1e-6)  # torchmetrics sums in float32
    # the logged test/ece's bins: confidence 1.0 (a saturated fp32 softmax) in the last bin, as Calibration puts it
    # (torchmetrics gives it a 16th bin: 0.525 on these two, where the logged test/ece is 0.475)
    saturated = [{"gold": "a", "pred": "b", "probs": {"a": 0.0, "b": 1.0}, "confidence": 1.0},
                 {"gold": "a", "pred": "a", "probs": {"a": 0.95, "b": 0.05}, "confidence": 0.95}]
    logged = Calibration("ece")
    logged.update(torch.tensor([[-30.0, 30.0], [math.log(0.95), math.log(0.05)]]), torch.tensor([0, 0]))
    assert m["ece"](saturated) == pytest.approx(float(logged.compute()), abs=1e-6) == pytest.approx(0.475, abs=1e-6)
    onehot = np.eye(2)[gold.numpy()]
    assert m["brier"](records) == pytest.approx(((probs.numpy() - onehot) ** 2).sum(1).mean())
    assert m["nll"](records) == pytest.approx(float(torch.nn.functional.nll_loss(probs.log(), gold)))
    # macro-F1 by hand on four examples: class a F1 = 2/3, class b F1 = 1/2, class c absent
    small = [{"gold": g, "pred": p} for g, p in [("a", "a"), ("a", "b"), ("b", "b"), ("a", "a")]]
    tp_a, tp_b = 2, 1
    assert m["f1_macro"](small) == pytest.approx((2 * tp_a / (2 + 3) + 2 * tp_b / (2 + 1)) / 2)


def test_weighted_metrics_equal_the_metric_on_the_resampled_data() -> None:
    """A weight row is a bootstrap draw: the metric of the repeated records, ties included."""
    rng = np.random.default_rng(1)
    gold = np.round(rng.normal(size=60), 1)  # rounded: tied values
    records = [{"index": i, "gold": float(g), "pred": float(np.round(g + rng.normal(), 1))} for i, g in enumerate(gold)]
    weights = resample_weights(len(records), 3, rng)
    for row in weights:
        repeated = [r for r, k in zip(records, row) for _ in range(int(k))]
        x, y = [r["pred"] for r in repeated], [r["gold"] for r in repeated]
        for name, reference in [("spearman", stats.spearmanr(x, y)[0]), ("pearson", stats.pearsonr(x, y)[0]),
                                ("mse", np.mean((np.array(x) - y) ** 2))]:
            metric = prediction_metrics.REGRESSION[name]
            assert metric.value(row[None], metric.features(records))[0] == pytest.approx(reference)
            assert metric(repeated) == pytest.approx(reference)


def test_entity_f1_from_word_tags() -> None:
    records = [{"gold": ["B-PER", "I-PER", "O", "B-LOC"], "pred": ["B-PER", "I-PER", "O", "B-ORG"]},
               {"gold": ["O", "B-LOC"], "pred": ["I-LOC", "B-LOC"]}]  # strict IOB2: a lone I- is no entity
    m = prediction_metrics.TOKEN_CLASSIFICATION
    assert (m["precision"](records), m["recall"](records)) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["f1"](records) == pytest.approx(2 / 3)


# ---- statistics --------------------------------------------------------------------------------
def test_paired_bootstrap_ci_covers_the_true_difference() -> None:
    """Examples of varying difficulty shared by 3 seeds; the other config is right more often by a known
    amount. Over 60 test sets the 95% CI covers the true difference about 95% of the time."""
    acc = prediction_metrics.CLASSIFICATION["acc"]
    base_logit, effect, n = 0.8, 0.3, 400
    population = np.random.default_rng(99).normal(size=1_000_000)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    truth = float(np.mean(sigmoid(base_logit + effect + population) - sigmoid(base_logit + population)))
    covered, excludes_zero = 0, 0
    for trial in range(60):
        rng = np.random.default_rng(trial)
        difficulty = rng.normal(size=n)
        pairs = []
        for _ in range(3):
            ours = (rng.random(n) < sigmoid(base_logit + effect + difficulty)).astype(float)
            theirs = (rng.random(n) < sigmoid(base_logit + difficulty)).astype(float)
            pairs.append((np.stack([ours, np.ones(n)], 1), np.stack([theirs, np.ones(n)], 1)))

        def difference(w):
            return np.mean([acc.value(w, a) - acc.value(w, b) for a, b in pairs], 0)

        boot = paired_bootstrap(difference, n, resamples=400, seed=trial)
        covered += boot.ci_low <= truth <= boot.ci_high
        excludes_zero += boot.ci_low > 0
    assert 0.88 <= covered / 60 <= 1.0  # binomial(60, 0.95): below 0.88 has probability < 1%
    assert excludes_zero >= 45  # a real effect of ~5 points is found


def test_identical_predictions_are_not_significant_and_a_large_effect_is(tmp_path) -> None:
    sweep = make_sweep(tmp_path / "same", {"cross_entropy": 0.8, "copy": 0.8}, n=200)
    for job in (3, 4, 5):  # the copies predict exactly what the baseline does, seed by seed
        (sweep / str(job) / "predictions.jsonl").write_text((sweep / str(job - 3) / "predictions.jsonl").read_text())
    row = compare.build_comparison([sweep], ["loss=cross_entropy"], resamples=300)["configs"][1]
    assert row["delta"] == 0 and row["p_bootstrap"] >= 0.05 and (row["delta_ci_low"], row["delta_ci_high"]) == (0, 0)
    far = compare.build_comparison([make_sweep(tmp_path / "far", {"cross_entropy": 0.6, "focal": 0.9})],
                                   ["loss=cross_entropy"], resamples=300)["configs"][1]
    assert far["delta"] == pytest.approx(0.3, abs=0.06) and far["p_bootstrap"] < 0.01 and far["delta_ci_low"] > 0.2


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3 = 0.03, x2 = 0.06, x1 = 0.04 raised to the running max 0.06
    assert holm([0.04, 0.01, 0.03]) == [pytest.approx(0.06), pytest.approx(0.03), pytest.approx(0.06)]
    assert holm([0.5, None, 0.6]) == [pytest.approx(1.0), None, pytest.approx(1.0)]  # capped at 1
    assert holm([0.02]) == [0.02]


# ---- errors ------------------------------------------------------------------------------------
def _rewrite(run: Path, change) -> None:
    path = run / "predictions.jsonl"
    records = [change(json.loads(line)) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in records if r is not None))


@pytest.mark.parametrize("breakage,message", [
    (lambda job: _rewrite(job, lambda r: {**r, "file": "/data/sst2/train.tsv"}), "was tested on /data/sst2/train.tsv"),
    (lambda job: _rewrite(job, lambda r: r if r["index"] < 50 else None), "has predictions for 50 test examples"),
    (lambda job: (job / "predictions.jsonl").unlink(), "no predictions.jsonl in"),
    (lambda job: (job / ".hydra" / "config.yaml").write_text("seed: 0\ndata:\n  task: regression\n"),
     "the runs solve different tasks (classification, regression)"),
    (lambda job: (job / ".hydra" / "config.yaml").write_text(
        "seed: 0\noptimized_metric: val/f1_macro\ndata:\n  task: classification\n"),
     "the runs pick checkpoints on different metrics (val/acc, val/f1_macro); pass --metric"),
])
def test_one_line_errors(tmp_path, capsys, breakage, message) -> None:
    sweep = make_sweep(tmp_path / "sweep", {"cross_entropy": 0.7, "focal": 0.8}, n=80)
    breakage(sweep / "3")
    assert compare.main([str(sweep), "--baseline", "loss=cross_entropy", "--resamples", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_baseline_selector_must_match_one_config(tmp_path, capsys) -> None:
    sweep = make_sweep(tmp_path / "sweep", {"cross_entropy": 0.7, "focal": 0.8}, seeds=(0,), n=40)
    assert compare.main([str(sweep), "--baseline", "loss=mse"]) == 2
    assert "--baseline loss=mse matches no config; configs are: loss=cross_entropy; loss=focal" in capsys.readouterr().err
    assert compare.main([str(sweep), "--baseline", "model=tiny"]) == 2
    assert "matches 2 configs" in capsys.readouterr().err
    assert compare.main([str(sweep)]) == 2  # two configs, no baseline named
    assert "pick the baseline with --baseline" in capsys.readouterr().err
    assert compare.main([str(sweep), "--baseline", "loss=focal", "--metric", "mcc"]) == 2
    assert "test/mcc cannot be recomputed" in capsys.readouterr().err


# ---- the command -------------------------------------------------------------------------------
def test_cli_end_to_end(tmp_path, capsys) -> None:
    sweep = make_sweep(tmp_path / "sweep", {"cross_entropy": 0.7, "focal": 0.9, "smoothed": 0.72}, n=200)
    assert compare.main([str(sweep), "--baseline", "loss=cross_entropy", "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    assert "| config | seeds | mean ± std | 95% CI (seeds) | paired seeds | Δ vs baseline | Δ 95% CI |" in out
    assert "| loss=cross_entropy (baseline) | 3 |" in out and "after Holm: `loss=focal` (better)" in out
    result = json.loads((sweep / "compare_acc.json").read_text())
    assert result["metric"] == "test/acc" and result["n_examples"] == 200 and result["resamples"] == 500
    base, focal, smoothed = result["configs"]
    assert base["baseline"] and focal["n_pairs"] == 3 and focal["delta"] > 0.1
    assert focal["delta"] == pytest.approx(np.mean(list(focal["values"].values())) - base["mean"])
    assert focal["p_holm"] == pytest.approx(min(1, 2 * min(focal["p_bootstrap"], smoothed["p_bootstrap"])))
    assert 0 < focal["p_paired_t"] < 0.05
    rows = (sweep / "compare_acc.csv").read_text().splitlines()
    assert rows[0].startswith("metric,config,baseline,n,mean,std,ci_low,ci_high,delta") and len(rows) == 4
    assert (sweep / "compare_acc.png").stat().st_size > 1000 and (sweep / "compare_acc.md").is_file()

    # BASELINE OTHER... form: a run dir against a sweep, written to --out, another metric
    out_dir = tmp_path / "out"
    assert compare.main([str(sweep / "0"), str(sweep / "3"), str(sweep / "6"), "--metric", "ece", "--out",
                         str(out_dir), "--resamples", "50"]) == 0
    ece = json.loads((out_dir / "compare_ece.json").read_text())
    assert ece["mode"] == "min" and ece["baseline"] == "loss=cross_entropy"
    assert [c["config"] for c in ece["configs"][1:]] == ["loss=focal", "loss=smoothed"]
    assert ece["configs"][1]["seeds"] == [0] and ece["configs"][1]["n_pairs"] == 1
    assert (out_dir / "compare_ece.png").is_file() and not (sweep / "compare_ece.md").exists()


def test_eval_runs_stand_for_the_models_they_tested(tmp_path, capsys) -> None:
    """eval.py runs of checkpoints on a new test file: grouped by the training runs' configs and paired by
    their training seeds (not eval.py's own seed 42, one config per ckpt_path)."""
    new_test = "/data/new_test.tsv"
    for job, (loss, seed, acc) in enumerate([("cross_entropy", 0, 0.6), ("cross_entropy", 1, 0.62),
                                             ("focal", 0, 0.9), ("focal", 1, 0.92)]):
        trained = tmp_path / "sweep" / str(job)
        (trained / ".hydra").mkdir(parents=True)
        (trained / ".hydra" / "overrides.yaml").write_text(f"- loss={loss}\n- seed={seed}\n- model=tiny\n")
        (trained / ".hydra" / "config.yaml").write_text(
            f"seed: {seed}\ntrain: true\ndata:\n  task: classification\nloss:\n  name: {loss}\n")
        (trained / "checkpoints").mkdir()
        ckpt = trained / "checkpoints" / "best.ckpt"
        ckpt.touch()
        correct = np.random.default_rng(job).random(300) < acc
        evaluated = make_run(tmp_path / "evals" / str(job), [f"ckpt_path={ckpt}", "data=tsv", f"data.test_file={new_test}"],
                             42, classification_records(correct, np.random.default_rng(0), file=new_test))
        (evaluated / ".hydra" / "config.yaml").write_text(
            f"seed: 42\ntrain: false\nckpt_path: {ckpt}\ndata:\n  task: classification\nloss:\n  name: cross_entropy\n")

    from tunelab.results import group_runs, load_runs

    groups = group_runs(load_runs(tmp_path / "evals"))
    assert [g.label for g in groups] == ["loss=cross_entropy", "loss=focal"]
    assert [sorted(g.by_seed()) for g in groups] == [[0, 1], [0, 1]]
    assert all("data.test_file=/data/new_test.tsv" in g.config for g in groups)
    assert {r.objective for r in groups[1].runs} == {'{"name": "focal"}'}  # the checkpoint's loss, not eval's default
    assert compare.main([str(tmp_path / "evals"), "--baseline", "loss=cross_entropy", "--resamples", "200"]) == 0
    focal = json.loads((tmp_path / "evals" / "compare_acc.json").read_text())["configs"][1]
    assert focal["config"] == "loss=focal" and focal["n_pairs"] == 2 and focal["delta"] > 0.2
    # the sweep report of eval runs ranks on the test metric they logged, saying what that means
    from tunelab.report import build_report

    report = build_report(tmp_path / "evals")
    assert report["metric"] == "test/acc" and [c["seeds"] for c in report["configs"]] == [[0, 1], [0, 1]]
    assert any("logged no val/acc: choose models on their training runs' val/acc" in n for n in report["notes"])
