"""CPU benchmarks, each measured side by side in this one invocation:

  framework  train.py's Lightning path vs a hand-written PyTorch loop (same model, data order, batch
             size, precision): samples/s and their ratio
  padding    pad-to-max vs dynamic padding vs dynamic + length-grouped batching: samples/s and SST-2
             dev accuracy after the same number of training samples
  startup    `python train.py`: process start -> first training step (imports, config, data, model load)
  cache      tokenization: first vs second preparation of the same file
  compile    torch.compile's cold compile (first batch to the end of the first step, fresh process and
             caches), model.compile_scope=model vs layers, one dynamic-shape graph each
  host       host time per step (model=tiny): hand-written loop vs the same step in a bare Lightning Trainer
             vs framework, with and without train metrics
             (--host-profile: where that time goes, by package)

python bench/throughput.py                 # all, full size (~10 min on 2 cores)
python bench/throughput.py --only padding  # one part
python bench/throughput.py --smoke         # tiny model, fixture rows: correctness only (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.meters, when run as `python bench/throughput.py`
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.baselines import bare_lightning, raw_loop  # noqa: E402
from bench.meters import STARTUP_TIMER, run_fresh  # noqa: E402
from tunelab.config import compose_config  # noqa: E402
from tunelab.pipeline import build_datamodule, run  # noqa: E402

METER = "+callbacks.throughput._target_=bench.meters.ThroughputMeter"
STEP_OPS = "bench.host_time.StepOps"


def base_overrides(smoke: bool, cache: Path) -> list[str]:
    common = [
        # the framework as users run it, its own progress bar included (a null one would bring Lightning's)
        "experiment=sst2_minilm", "logger=csv", "scheduler=none",
        "trainer.accelerator=cpu", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        f"paths.cache_dir={cache}", "data.max_length=128", "data.batch_size=32",
    ]
    if smoke:
        common += ["model=tiny", f"paths.data_dir={ROOT / 'tests' / 'fixtures'}", "data.batch_size=8"]
    return common


def run_framework(overrides: list[str], out: Path) -> tuple[dict, dict]:
    metrics = run(compose_config([*overrides, METER], out))
    return json.loads((out / "throughput.json").read_text()), metrics


def alternate(overrides: list[str], tmp: Path, name: str, reps: int, steps: int, warmup: int,
              variants: dict[str, list[str]], host_profile: bool = False,
              count_ops_at: int | None = None, bare: bool = False) -> dict[str, list[dict]]:
    """The hand-written loop ("raw"), with `bare` the loop's step in a bare Lightning Trainer
    ("lightning_bare", and "lightning_bare_manual" with manual optimization: bench.baselines), and each
    framework variant (extra overrides), alternating `reps` times to cancel slow drifts of the machine: every
    run's throughput summary, by name (with `step_ops`, the ops of step `count_ops_at`, when given: a warm-up
    step, so the count does not slow the timed ones)."""
    bare_runs = {"lightning_bare": False, "lightning_bare_manual": True} if bare else {}  # name: manual optimization
    runs: dict[str, list[dict]] = {"raw": [], **{b: [] for b in bare_runs}, **{v: [] for v in variants}}
    measures = [*(["+callbacks.throughput.host_profile=true"] if host_profile else []),
                *([f"+callbacks.ops._target_={STEP_OPS}", f"+callbacks.ops.step={count_ops_at}"]
                  if count_ops_at is not None else [])]
    for rep in range(reps):
        loop_overrides = [o for o in overrides if "throughput" not in o]
        runs["raw"].append(raw_loop(loop_overrides, tmp / f"{name}_raw{rep}", steps - warmup, warmup,
                                    host_profile=host_profile, count_ops_at=count_ops_at))
        for b, manual in bare_runs.items():
            runs[b].append(bare_lightning(loop_overrides, tmp / f"{name}_{b}{rep}", steps - warmup, warmup,
                                          host_profile=host_profile, count_ops_at=count_ops_at, manual=manual))
        for variant, extra in variants.items():
            out = tmp / f"{name}_{variant}{rep}"
            summary = run_framework([*overrides, *measures, *extra], out)[0]
            if count_ops_at is not None:
                summary["step_ops"] = json.loads((out / "step_ops.json").read_text())
            runs[variant].append(summary)
    return runs


def bench_framework(smoke: bool, cache: Path, tmp: Path) -> dict:
    steps, warmup = (6, 2) if smoke else (60, 5)
    overrides = [*base_overrides(smoke, cache), f"trainer.max_steps={steps}", "test=false",
                 f"+callbacks.throughput.warmup={warmup}"]
    runs = alternate(overrides, tmp, "fw", 1 if smoke else 2, steps, warmup, {"framework": []})
    results = {k: [r["samples_per_s"] for r in v] for k, v in runs.items()}
    fw_sps, raw_sps = max(results["framework"]), max(results["raw"])
    return {"framework_samples_per_s": fw_sps, "raw_loop_samples_per_s": raw_sps, "ratio": fw_sps / raw_sps,
            "runs": results, "steps_timed": steps - warmup}


def bench_host(smoke: bool, cache: Path, tmp: Path, host_profile: bool = False) -> dict:
    """Host time per training step with a model so small that compute is negligible (model=tiny): the
    hand-written loop vs its step in a bare Lightning Trainer (Lightning's own cost) vs the framework with
    and without training-batch metrics, alternating, best of 3, and the ops one training step dispatches
    (step 21: a warm-up step, not a logging one).
    host_profile: one more round under cProfile, its host time by package (not timed)."""
    steps, warmup = (6, 2) if smoke else (450, 50)
    count_ops_at = 1 if smoke else 21
    overrides = [*base_overrides(smoke, cache), "model=tiny", "data.train_limit=4096", f"trainer.max_steps={steps}",
                 "test=false", "export=false", f"+callbacks.throughput.warmup={warmup}"]
    variants = {"framework": [], "framework_train_metrics_false": ["train_metrics=false"]}
    runs = alternate(overrides, tmp, "host", 1 if smoke else 3, steps, warmup, variants, count_ops_at=count_ops_at,
                     bare=True)
    ms = {k: [r["ms_per_step"] for r in v] for k, v in runs.items()}
    best = {k: min(v) for k, v in ms.items()}
    out = {"ms_per_step": best, "runs": ms, "steps_timed": steps - warmup,
           "ops_per_step": {k: v[0]["step_ops"] for k, v in runs.items()},
           "gc_ms_per_step": {k: sum(r["gc_ms_per_step"] for r in v) / len(v) for k, v in runs.items()},
           # the best run's CPU per step by thread, beside its wall ms: host work vs waiting
           "thread_cpu_ms_per_step": {k: v[ms[k].index(best[k])]["thread_cpu_ms_per_step"] for k, v in runs.items()},
           **{f"{k}_over_raw_speed": best["raw"] / v for k, v in best.items() if k != "raw"}}
    if host_profile:
        profiled = alternate(overrides, tmp, "host_profiled", 1, steps, warmup, variants, host_profile=True, bare=True)
        out["host_profile"] = {k: v[0]["host_profile"] for k, v in profiled.items()}
    return out


def bench_padding(smoke: bool, cache: Path, tmp: Path, samples: int = 2000) -> dict:
    samples = 64 if smoke else samples
    variants = {
        "pad_to_max": ["data.pad_to_multiple_of=128", "data.group_by_length=false"],
        "dynamic": ["data.group_by_length=false"],
        "dynamic_grouped": ["data.group_by_length=true"],
    }
    out = {}
    for name, extra in variants.items():
        overrides = [*base_overrides(smoke, cache), f"data.train_limit={samples}", "trainer.max_epochs=1",
                     "+callbacks.throughput.warmup=2", *extra]
        tp, metrics = run_framework(overrides, tmp / name)
        out[name] = {"samples_per_s": tp["samples_per_s"], "padding_fraction": tp["padding_fraction"],
                     "test_acc": metrics.get("test/acc")}
    base = out["pad_to_max"]["samples_per_s"]
    for row in out.values():
        row["speedup_vs_pad_to_max"] = row["samples_per_s"] / base
    out["training_samples"] = samples
    return out


def timed_train_run(overrides: list[str], run_dir: Path, **env: str) -> tuple[dict, float]:
    """`python train.py` in a fresh process with the start-up timer: its startup.json and wall seconds."""
    args = [*overrides, STARTUP_TIMER, f"hydra.run.dir={run_dir}"]
    proc, wall = run_fresh([sys.executable, str(ROOT / "train.py"), *args], **env)
    proc.check_returncode()
    return json.loads((run_dir / "startup.json").read_text()), wall


def bench_startup(smoke: bool, cache: Path, tmp: Path) -> dict:
    out = {}
    for logger in ("csv",) if smoke else ("wandb", "csv"):
        args = [*base_overrides(smoke, cache), f"logger={logger}", "trainer.max_steps=1", "test=false"]
        timer, _ = timed_train_run(args, tmp / f"startup_{logger}", WANDB_MODE="offline")
        out[f"logger={logger}"] = timer["seconds"]
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import tunelab.pipeline"], check=True)
    out["import_tunelab_pipeline"] = time.time() - t0
    return out


def bench_compile(smoke: bool, cache: Path, tmp: Path) -> dict:
    """Cold compile of the training step, whole model vs each transformer layer, each in a fresh process
    with empty compile caches (a process's in-memory kernel caches would serve the second scope). Lengths
    padded to multiples of 16 as in the GPU experiments: a batch without any padding runs the layers
    without a mask (transformers drops an all-ones mask outside a compiled graph), a second layer graph."""
    out = {}
    for scope in ("model", "layers"):
        args = [*base_overrides(smoke, cache), "data.pad_to_multiple_of=16", "data.drop_last=true",
                "model.compile=true", "model.compile_dynamic=true",
                f"model.compile_scope={scope}", f"model.compile_cache_dir={tmp / f'inductor_{scope}'}",
                *(["model.compile_backend=aot_eager"] if smoke else []),
                "trainer.max_steps=3", "test=false", "export=false"]
        timer, wall = timed_train_run(args, tmp / f"compile_{scope}")
        out[scope] = {"compile_s": timer["first_step_s"] - timer["seconds"], "graphs": timer["compile"]["graphs"],
                      "process_s": wall}
    out["compile_speedup"] = out["model"]["compile_s"] / out["layers"]["compile_s"]
    return out


def bench_cache(smoke: bool, tmp: Path) -> dict:
    overrides = base_overrides(smoke, tmp / "fresh_cache")
    dm = build_datamodule(compose_config(overrides, tmp / "cache_run"))
    calls = {"n": 0}
    encode = dm.encode_file

    def counting(path, labelled=True):
        calls["n"] += 1
        return encode(path, labelled)

    dm.encode_file = counting
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        dm.prepare_data()
        timings.append(time.perf_counter() - t0)
    return {"first_s": timings[0], "second_s": timings[1], "tokenizations": calls["n"], "files": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="cache,startup,framework,padding,compile,host")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--padding-samples", type=int, default=2000, help="training samples per padding variant")
    parser.add_argument("--host-profile", action="store_true", help="host part: add a cProfile round (host time by package)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cache = tmp / "cache"
        for part in args.only.split(","):
            t0 = time.time()
            if part == "cache":
                results[part] = bench_cache(args.smoke, tmp)
            elif part == "startup":
                results[part] = bench_startup(args.smoke, cache, tmp)
            elif part == "framework":
                results[part] = bench_framework(args.smoke, cache, tmp)
            elif part == "padding":
                results[part] = bench_padding(args.smoke, cache, tmp, args.padding_samples)
            elif part == "compile":
                results[part] = bench_compile(args.smoke, cache, tmp)
            elif part == "host":
                results[part] = bench_host(args.smoke, cache, tmp, args.host_profile)
            else:
                raise SystemExit(f"unknown part {part!r}; use cache, startup, framework, padding, compile, host")
            results[part]["bench_wall_s"] = time.time() - t0
            print(f"== {part}\n{json.dumps(results[part], indent=2)}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
