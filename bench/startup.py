"""Where a run's start-up goes, stage by stage, in one fresh process: the imports (torch, transformers,
lightning, the rest of tunelab.pipeline), the config, CUDA initialisation, the data (prepared as the cache
finds it, again on the warm cache, then set up), the model load and its move to the device, the Trainer:
what `python train.py` pays before Lightning's fit starts (bench.meters.StartupTimer's `callbacks_s`, one
number). Then two more fresh processes: a bare interpreter, and `python -X importtime -c "import
tunelab.pipeline"` for the imports' self time by top-level package. The result also says whether the
big packages had their bytecode before the timed imports.

python bench/startup.py --out startup.json   # experiment=sst2_minilm_gpu, shipped MiniLM (trainer=cpu without a GPU)
python bench/startup.py --profile-stages     # + one more cold process, each stage under cProfile: its slowest calls
python bench/startup.py --smoke              # tiny model, fixture rows: correctness only (run by the tests)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import importlib.util
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["model=tiny", f"paths.data_dir={ROOT / 'tests' / 'fixtures'}"]
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def stages(overrides: list[str], out: Path, profiled: dict[str, list] | None = None) -> dict[str, float]:
    """Seconds of each start-up stage, in pipeline order, in this (fresh) process. `profiled`: run each stage
    after the imports (which `-X importtime` breaks down) under cProfile and put its slowest calls there."""
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str):
        profile = cProfile.Profile() if profiled is not None and not name.startswith("import") else None
        t0 = time.perf_counter()
        if profile is not None:
            profile.enable()
        yield
        if profile is not None:
            profile.disable()
        seconds[name] = time.perf_counter() - t0
        if profile is not None:  # after the clock: reading the profile is not the stage's time
            profiled[name] = slowest_calls(profile)

    with stage("import torch"):
        import torch
    with stage("import transformers"):
        importlib.import_module("transformers")
    with stage("import lightning"):
        importlib.import_module("lightning.pytorch")
    with stage("import tunelab.pipeline (the rest)"):
        from tunelab import pipeline
        from tunelab.config import compose_config
        from tunelab.module import TransformerModule
        from tunelab.trainer import build_trainer
        from tunelab.validation import validate
    gpu = torch.cuda.is_available()
    with stage("config + checks"):
        cfg = compose_config([*overrides, *([] if gpu else ["trainer=cpu", "trainer.precision=32-true"])], out)
        validate(cfg)
    if gpu:
        with stage("cuda init"):
            torch.zeros(1, device="cuda")
            torch.cuda.synchronize()
    with stage("data: prepare (the cache as found)"):
        datamodule = pipeline.build_datamodule(cfg)
        datamodule.prepare_data()
    with stage("data: prepare (warm cache)"):
        datamodule.prepare_data()
    with stage("data: setup"):
        datamodule.setup("fit")
    with stage("model: load"):
        module = TransformerModule(**pipeline.module_kwargs(cfg, datamodule))
    with stage("model: to device"):
        module.to("cuda" if gpu else "cpu")
        if gpu:
            torch.cuda.synchronize()
    with stage("trainer"):
        build_trainer(cfg)
    return seconds


def bytecode_state(packages: tuple[str, ...] = ("torch", "transformers", "lightning")) -> dict[str, dict]:
    """Whether each package's compiled bytecode (__pycache__/*.pyc of its __init__) exists before the
    timed process imports it, and whether Python could write it there: a machine whose packages ship
    without bytecode in a read-only directory compiles every imported module's source in every process,
    which is then most of its import time. Looked up without importing (this parent stays free of torch)."""
    state = {}
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            continue
        state[name] = {"cached": Path(importlib.util.cache_from_source(spec.origin)).exists(),
                       "writable": os.access(Path(spec.origin).parent, os.W_OK),
                       "pycache_prefix": sys.pycache_prefix, "dont_write_bytecode": sys.dont_write_bytecode}
    return state


def slowest_calls(profile: cProfile.Profile, top: int = 12) -> list[dict[str, Any]]:
    """The functions a profiled stage spent most time in, counting their callees (cumulative seconds), with
    the stage's own frames (this file, contextlib) left out; paths from the package on."""
    rows = []
    for (file, line, name), (_, calls, _, cumulative, _) in pstats.Stats(profile).stats.items():
        if file == __file__ or file.endswith("contextlib.py"):
            continue
        where = re.split(r"[/\\](?:site|dist)-packages[/\\]", file)[-1] if file != "~" else ""
        rows.append({"function": f"{where}:{line}({name})" if where else name, "cumulative_s": cumulative,
                     "calls": calls})
    return sorted(rows, key=lambda r: -r["cumulative_s"])[:top]


def import_self_time(env: dict[str, str], top: int = 15) -> dict[str, float]:
    """`import tunelab.pipeline` under -X importtime in a fresh process: self seconds by top-level package,
    the `top` largest and the rest as "other"."""
    proc, _ = timed_run(["-X", "importtime", "-c", "import tunelab.pipeline"], env)
    by_package: dict[str, float] = {}
    for match in IMPORT_LINE.finditer(proc.stderr):
        package = match.group(2).split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(match.group(1)) / 1e6
    ranked = sorted(by_package.items(), key=lambda kv: -kv[1])
    return {**dict(ranked[:top]), "other": sum(s for _, s in ranked[top:])}


def timed_run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """`python <args>` in a fresh process from the project root, output captured: the process and its wall
    seconds. (bench.meters.run_fresh does the same, but importing it would load torch into this parent.)"""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"python {' '.join(args)[:200]} failed:\n{proc.stderr[-3000:]}")
    return proc, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="sst2_minilm_gpu")
    parser.add_argument("--model-dir", default=None, help="model.name_or_path (default: the experiment's)")
    parser.add_argument("--data-dir", default=None, help="paths.data_dir (default: the config's)")
    parser.add_argument("--cache-dir", default=None, help="tokenization cache (default: a new, cold one)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--profile-stages", action="store_true",
                        help="then one more fresh process with each stage after the imports under cProfile: its slowest calls")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # the stage process: its overrides (JSON)
    parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # the fresh process timed stage by stage; its result is stdout's last line
        profiled: dict[str, list] | None = {} if args.child_profile else None
        with tempfile.TemporaryDirectory() as tmp:
            seconds = stages(json.loads(args.child), Path(tmp), profiled)
        print(json.dumps({"seconds": seconds, "slowest_calls": profiled}))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PROJECT_ROOT": str(ROOT),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        def overrides_with(cache_dir: Path | str) -> list[str]:
            return [f"experiment={args.experiment}", f"paths.cache_dir={cache_dir}",
                    *([f"model.name_or_path={args.model_dir}", f"model.tokenizer={args.model_dir}"]
                      if args.model_dir else []),
                    *([f"paths.data_dir={args.data_dir}"] if args.data_dir else []),
                    *(SMOKE if args.smoke else []), *args.override]

        overrides = overrides_with(args.cache_dir or Path(tmp) / "tokens")
        bytecode = bytecode_state()  # before the stage process imports (and may compile) them
        proc, wall = timed_run([__file__, "--child", json.dumps(overrides)], env)
        if args.profile_stages:  # its own process and new token cache, as cold: the timed one stays unprofiled
            profiled_proc, _ = timed_run([__file__, "--child", json.dumps(overrides_with(Path(tmp) / "tokens_profiled")),
                                          "--child-profile"], env)
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    result = {
        "overrides": overrides,
        "stages_s": seconds,
        "stages_total_s": sum(seconds.values()),
        "process_wall_s": wall,  # the stages plus the interpreter's start and exit
        "bare_python_s": timed_run(["-c", "pass"], env)[1],
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),  # tokenizer threads
        "import_self_s_by_package": import_self_time(env),
        "bytecode_before_imports": bytecode,
    }
    if args.profile_stages:  # each stage's profiled seconds (slowed by cProfile) and its slowest calls
        profiled = json.loads(profiled_proc.stdout.strip().splitlines()[-1])
        result["profiled_stages"] = {name: {"seconds": profiled["seconds"][name], "slowest_calls": calls}
                                     for name, calls in profiled["slowest_calls"].items()}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
