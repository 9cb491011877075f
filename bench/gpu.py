"""GPU path benchmark: samples/s and model-FLOP utilisation (MFU: padded tokens, what the GPU computes;
useful MFU: real tokens only) of the framework's training path with bf16-mixed, fused AdamW, TF32, pinned
memory + loader workers, length-grouped full batches padded to multiples of 16: eager vs torch.compile
vs CUDA graphs (one dynamic-shape compile, one graph replayed per length bucket) vs CUDA graphs of the
eager kernels (`model.compile_backend=cudagraphs`, *_graphs: a static trace per bucket, no inductor
compile), each beside the hand-written loop (*_raw*) on the same batches and the loop's step in a bare
Lightning Trainer (*_bare*: Lightning's own cost), for MiniLM-shaped (SST-2 lengths, the default table)
and BERT-base-shaped encoders (random init). Compiled cases warm up one epoch
(every length bucket) before timing; every case reports graphs_compiled_while_timed (0 for a valid
measurement). An untimed eager run of the loop (MiniLM, SST-2) warms the process first (warm_process_s),
so no case pays its one-time costs. Probes run after the timed cases: `<case>+profile` (torch.profiler:
GPU busy fraction, top kernels; --profile) and `<case>+host` (cProfile: host time per step by package,
framework beside loop; --host-profile).

python bench/gpu.py --batch-size 32 --out gpu32.json   # on a CUDA machine: the real-length table
python bench/gpu.py --smoke                           # CPU, tiny shapes: correctness only (run by the tests)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import ROOT, run_framework  # noqa: E402

import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from bench.baselines import bare_lightning, raw_loop  # noqa: E402
from bench.meters import compile_counts, device_name, training_flops  # noqa: E402
from tunelab.resolvers import minilm_path  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks
SHAPES = {
    "minilm": {},  # all-MiniLM-L6-v2's own config: H384, 6 layers
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}


COMPILE = ["model.compile=true"]
STATIC = [*COMPILE, "model.compile_dynamic=false"]  # one specialised graph per length bucket
DYNAMIC = [*COMPILE, "model.compile_dynamic=true"]  # one graph for every batch shape
CUDAGRAPHS = [*DYNAMIC, "model.compile_mode=reduce-overhead"]  # ... replayed as one CUDA graph per shape
# the eager kernels as CUDA graphs, no inductor: one static graph per length bucket (the backend cannot
# replay a dynamic-shape graph, pytorch#131009)
GRAPHS = [*STATIC, "model.compile_backend=cudagraphs"]
CASES = {  # name: (shape, data, compile overrides; [] = eager). *_raw*: the hand-written loop
    "minilm": ("minilm", "sst2", []), "minilm_compile": ("minilm", "sst2", DYNAMIC),
    "minilm_cudagraphs": ("minilm", "sst2", CUDAGRAPHS),
    "minilm_raw": ("minilm", "sst2", []), "minilm_raw_compile": ("minilm", "sst2", DYNAMIC),
    "minilm_raw_cudagraphs": ("minilm", "sst2", CUDAGRAPHS),
    # regional compilation: each layer compiled and replayed as its own CUDA graph, the rest eager
    "minilm_cudagraphs_layers": ("minilm", "sst2", [*CUDAGRAPHS, "model.compile_scope=layers"]),
    "minilm_raw_cudagraphs_layers": ("minilm", "sst2", [*CUDAGRAPHS, "model.compile_scope=layers"]),
    "minilm_graphs": ("minilm", "sst2", GRAPHS), "minilm_raw_graphs": ("minilm", "sst2", GRAPHS),
    "minilm_bare": ("minilm", "sst2", []), "minilm_bare_graphs": ("minilm", "sst2", GRAPHS),
    "minilm_bare_manual_graphs": ("minilm", "sst2", GRAPHS),  # Lightning's manual optimization
    "bert_sst2": ("bert-base", "sst2", []), "bert_sst2_compile": ("bert-base", "sst2", COMPILE),
    "bert_sst2_static": ("bert-base", "sst2", STATIC),
    "bert_sst2_cudagraphs": ("bert-base", "sst2", [*STATIC, "model.compile_mode=reduce-overhead"]),
    "bert_imdb": ("bert-base", "imdb", []), "bert_imdb_compile": ("bert-base", "imdb", COMPILE),
    "bert_imdb_cudagraphs": ("bert-base", "imdb", [*STATIC, "model.compile_mode=reduce-overhead"]),
}
# the framework's per-step extras over bare Lightning, switched off one group per case (and all of them in
# `_lean`), each replayed as CUDA graphs like minilm_graphs: what each costs a host-bound step
EXTRAS = {"nan_check": ["on_nan=off"],
          "progress": ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"],
          # no loggers, no LR monitor, and no step values (loss, gradient norm) computed for them
          "logging": ["logger=none", "callbacks.lr_monitor=null", "trainer.log_every_n_steps=1000000"],
          # Python's automatic garbage collection instead of the callback's schedule
          "garbage_collection": ["callbacks.garbage_collection=null"]}
WITHOUT = {f"minilm_graphs_no_{k}": v for k, v in EXTRAS.items()}
WITHOUT["minilm_graphs_lean"] = [o for v in EXTRAS.values() for o in v]
CASES |= {case: ("minilm", "sst2", GRAPHS) for case in WITHOUT}
# each framework case right beside its loop case: a drift over the process's life (clocks, allocator,
# garbage) lands on both sides of a ratio, not on one
REAL_LENGTHS = ("minilm_raw,minilm_bare,minilm,"
                "minilm_raw_graphs,minilm_bare_graphs,minilm_bare_manual_graphs,minilm_graphs,"
                "minilm_raw_compile,minilm_compile,minilm_raw_cudagraphs,minilm_cudagraphs")
WARM_PROCESS = "minilm_raw"  # run untimed before the first case (see warm_process)
PROFILER = "+callbacks.profile._target_=bench.profiler.StepProfiler"
PROFILED = "minilm+profile"
HOST_PROFILED = "minilm_raw+host,minilm+host,minilm_raw_graphs+host,minilm_bare_graphs+host,minilm_graphs+host"


def peak_flops() -> float | None:
    name = device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def case_overrides(args, shape: str, data: str, compile_opts: list[str], cache: Path, probe: str = "") -> list[str]:
    overrides = {f"model.config_overrides.{k}": v for k, v in SHAPES[shape].items()}
    compile_model = bool(compile_opts)
    timed_epoch = compile_model and not args.smoke  # compiled: warm up one epoch, time the next ones
    # IMDb: 690 training reviews, nearly all >= 128 tokens, so every batch is full length
    text = {"sst2": [f"data.batch_size={args.batch_size}"],
            "imdb": ["data.max_length=128", f"data.batch_size={args.imdb_batch_size}"]}[data]
    gpu = torch.cuda.is_available()
    return [
        f"data={data}", f"paths.data_dir={args.data_dir}", f"paths.cache_dir={cache}",
        f"model.name_or_path={args.model_dir}", "model.from_scratch=true", *compile_opts,
        *([f"model.compile_cache_dir={args.compile_cache}"] if args.compile_cache and compile_model else []),
        *[f"+{k}={v}" for k, v in overrides.items()],
        "trainer=gpu" if gpu else "trainer=cpu", "trainer.precision=bf16-mixed" if gpu else "trainer.precision=32-true",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        # like the hand-written loop, no metric updates on training batches (the loss only)
        "train_metrics=false",
        "test=false", "logger=csv", "scheduler=none", "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null",
        "trainer.enable_checkpointing=false",  # else Lightning's fallback checkpoint writes ~1.3 GB every epoch
        # full batches only (one batch size per length bucket); the meter ends the run after its steps
        "data.group_by_length=true", "data.pad_to_multiple_of=16", "data.drop_last=true",
        *([f"data.train_limit={args.train_limit}"] if args.train_limit else []),
        "trainer.max_steps=-1", "trainer.max_epochs=1000", "trainer.min_epochs=0",  # (a bound)
        f"+callbacks.throughput.warmup={args.warmup}", f"+callbacks.throughput.steps={args.steps - args.warmup}",
        # compiled: time the epochs after the first, once every length bucket (and its compile) was seen
        f"+callbacks.throughput.warmup_epochs={int(timed_epoch)}",
        *(["+callbacks.throughput.host_profile=true"] if probe == "host" else []),
        # the 5 steps just before the (then not measured) timed window
        *([PROFILER, f"+callbacks.profile.start_step={max(1, args.warmup - 6)}", "+callbacks.profile.steps=5"]
          if probe == "profile" else []),
        *text, *args.override,
        # smoke: compiled cases trace only (aot_eager): inductor's C++ builds take minutes on CPU
        *(["model.compile_backend=aot_eager"] if args.smoke and compile_model else []),
    ]


def check_probe(case: str, probe: str, compile_opts: list[str]) -> None:
    if probe not in ("", "profile", "host"):
        raise SystemExit(f"{case}+{probe}: a case takes +profile or +host")
    if probe == "profile" and ("_raw" in case or "_bare" in case or compile_opts):
        # the step profiler is a Lightning callback on warm-up steps: the loop has none, a compiled
        # case would be profiled while it still compiles
        raise SystemExit(f"{case}+profile: +profile probes eager framework cases only")


def loop(overrides: list[str], out: Path, steps: int, warmup: int, bare: bool = False, manual: bool = False,
         **kwargs) -> dict:
    """The hand-written loop on a case's batches (bare: its step in a bare Lightning Trainer, with manual
    optimization if `manual`), bf16 on the GPU as the framework's trainer=gpu."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = functools.partial(bare_lightning, manual=manual) if bare else raw_loop
    return run([o for o in overrides if "throughput" not in o and "profile" not in o], out, steps, warmup,
               device=device, bf16=device == "cuda", **kwargs)


def run_case(args, tmp: Path, name: str) -> dict:
    """One case; `<case>+profile` (torch.profiler: busy fraction, top kernels) and `<case>+host` (cProfile:
    host time by package) probe it instead: their samples/s are not measurements."""
    case, _, probe = name.partition("+")
    shape, data, compile_opts = CASES[case]
    if args.smoke:
        shape = "tiny"
    torch._dynamo.reset()
    before = compile_counts()
    t0 = time.time()
    overrides = [*case_overrides(args, shape, data, compile_opts, tmp / "cache", probe), *WITHOUT.get(case, [])]
    if "_raw" in case or "_bare" in case:
        tp = loop(overrides, tmp / name, args.steps - args.warmup, args.warmup, bare="_bare" in case,
                  manual="_manual" in case,
                  warmup_epochs=int(bool(compile_opts) and not args.smoke), host_profile=probe == "host")
    else:
        tp, _ = run_framework(overrides, tmp / name)
    row = {**tp, "wall_s": time.time() - t0}
    config = AutoConfig.from_pretrained(args.model_dir, **SHAPES[shape])
    executed = training_flops(config, tp["padded_tokens"], tp["padded_attended_pairs"])
    useful = training_flops(config, tp["tokens"], tp["attended_pairs"])
    if peak_flops() and tp["seconds"] > 0:
        row["model_tflops_per_s"] = executed / tp["seconds"] / 1e12
        row["mfu"] = executed / tp["seconds"] / peak_flops()  # padded tokens: what the GPU computed
        row["useful_mfu"] = useful / tp["seconds"] / peak_flops()  # real tokens only
    if compile_opts:
        after = compile_counts()
        row["compile"] = {k: after[k] - before.get(k, 0) for k in after}
    if (tmp / name / "profile.json").exists():
        row["profile"] = json.loads((tmp / name / "profile.json").read_text())
    print(f"== {name}: {json.dumps(row)}", flush=True)
    return row


def warm_process(args, tmp: Path) -> float:
    """An untimed eager run of the MiniLM loop on SST-2 before the first timed case: the costs a
    process pays once (CUDA context, cuBLAS handles and workspaces, lazily loaded kernels, per-shape GEMM
    heuristics, the pinned and device allocators' growth) would otherwise land in whichever case runs
    first. Returns its wall seconds."""
    shape, data, _ = CASES[WARM_PROCESS]
    t0 = time.time()
    overrides = case_overrides(args, "tiny" if args.smoke else shape, data, [], tmp / "cache")
    steps = 2 if args.smoke else args.steps  # the device script's: 230 of an epoch's 256 batches
    loop(overrides, tmp / "warm_process", steps, 0)
    return time.time() - t0


def ratios(results: dict) -> dict[str, float]:
    """framework / hand-written loop per technique (and the bare Lightning step / loop, framework / bare
    Lightning step), and each technique / eager, where both ran."""
    sps = {k: v["samples_per_s"] for k, v in results.items() if isinstance(v, dict) and v.get("samples_per_s")}
    out = {}
    for mode in ("", "_graphs", "_compile", "_cudagraphs", "_cudagraphs_layers"):
        for num, den, key in (("minilm", "minilm_raw", "framework_over_raw"),
                              ("minilm_bare", "minilm_raw", "bare_over_raw"),
                              ("minilm_bare_manual", "minilm_raw", "bare_manual_over_raw"),
                              ("minilm", "minilm_bare", "framework_over_bare")):
            if f"{num}{mode}" in sps and f"{den}{mode}" in sps:
                out[f"{key}{mode}"] = sps[f"{num}{mode}"] / sps[f"{den}{mode}"]
        for impl in ("minilm", "minilm_raw", "minilm_bare"):
            if mode and f"{impl}{mode}" in sps and impl in sps:
                out[f"{impl}{mode}_over_eager"] = sps[f"{impl}{mode}"] / sps[impl]
    for case in WITHOUT:
        for den in ("minilm_graphs", "minilm_bare_graphs"):
            if case in sps and den in sps:
                out[f"{case}_over_{den.removeprefix('minilm_')}"] = sps[case] / sps[den]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="config.json + tokenizer (weights unused); default MiniLM")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--imdb-batch-size", type=int, default=64)
    parser.add_argument("--cases", default=REAL_LENGTHS,
                        help=f"comma-separated, from {', '.join(CASES)} (each may end in +profile or +host)")
    parser.add_argument("--train-limit", type=int, default=None, help="SST-2 training rows (a random subset)")
    parser.add_argument("--compile-cache", default=None, help="model.compile_cache_dir (default: the config's)")
    parser.add_argument("--profile", action="store_true",
                        help=f"then run {PROFILED}: torch.profiler on 5 eager steps (busy fraction, top kernels)")
    parser.add_argument("--host-profile", action="store_true",
                        help=f"then run {HOST_PROFILED}: cProfile, host time per step by package")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every case")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.model_dir = args.model_dir or minilm_path()
    if args.smoke:
        args.steps, args.warmup, args.batch_size = 4, 1, 8
        args.data_dir = str(ROOT / "tests" / "fixtures")
    # the probes after every timed case, torch.profiler last: it can leave CUPTI attached, slowing later launches
    names = [*filter(None, args.cases.split(",")), *(HOST_PROFILED.split(",") if args.host_profile else []),
             *([PROFILED] if args.profile else [])]
    for name in names:  # a misspelt case fails here, not after an hour of measuring
        case, _, probe = name.partition("+")
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
        check_probe(case, probe, CASES[case][2])
    results = {"device": device_name(), "torch": torch.__version__,
               "peak_bf16_flops": peak_flops(), "batch_size": args.batch_size, "steps_timed": args.steps - args.warmup}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if names:
            results["warm_process_s"] = warm_process(args, tmp)
        for name in names:
            if args.smoke and "imdb" in name:
                continue  # no IMDb fixture
            try:
                results[name] = run_case(args, tmp, name)
            except Exception as err:  # keep measuring the other cases; report what broke
                results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
                print(f"== {name}: FAILED {results[name]['error']}", flush=True)
            results |= ratios(results)
            if args.out:  # after every case: a run stopped at its time limit keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
