"""GPU path benchmark (issue 7): samples/s and model-FLOP utilisation (MFU) of the framework's training
path with bf16-mixed, fused AdamW, TF32, pinned memory + loader workers, length-grouped batches padded
to multiples of 16, eager vs torch.compile, for MiniLM-shaped and BERT-base-shaped encoders (random
init), plus the framework / hand-written-loop ratio on the GPU.

python bench/gpu.py --out gpu.json                # on a CUDA machine
python bench/gpu.py --smoke                       # CPU, tiny shapes: correctness only (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import METER, ROOT, raw_loop, run_framework  # noqa: E402

import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from bench.meters import compiled_graphs, training_flops  # noqa: E402
from tunelab.resolvers import minilm_path  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks
SHAPES = {
    "minilm": {},  # all-MiniLM-L6-v2's own config: H384, 6 layers
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}


COMPILE = ["model.compile=true"]
STATIC = [*COMPILE, "model.compile_dynamic=false"]  # one specialised graph per length bucket
CASES = {  # name: (shape, data, compile overrides; [] = eager)
    "minilm": ("minilm", "sst2", []), "minilm_compile": ("minilm", "sst2", COMPILE),
    "bert_sst2": ("bert-base", "sst2", []), "bert_sst2_compile": ("bert-base", "sst2", COMPILE),
    "bert_sst2_static": ("bert-base", "sst2", STATIC),
    "bert_sst2_cudagraphs": ("bert-base", "sst2", [*STATIC, "model.compile_mode=reduce-overhead"]),
    "bert_imdb": ("bert-base", "imdb", []), "bert_imdb_compile": ("bert-base", "imdb", COMPILE),
    "bert_imdb_cudagraphs": ("bert-base", "imdb", [*STATIC, "model.compile_mode=reduce-overhead"]),
}
PROFILER = "+callbacks.profile._target_=bench.meters.StepProfiler"


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def case_overrides(args, shape: str, data: str, compile_opts: list[str], cache: Path) -> list[str]:
    overrides = {f"model.config_overrides.{k}": v for k, v in SHAPES[shape].items()}
    compile_model = bool(compile_opts)
    timed_epoch = compile_model and not args.smoke  # compiled: warm up one epoch, time the next ones
    # IMDb: 690 training reviews, nearly all >= 128 tokens, so every batch is full length
    text = {"sst2": [f"data.batch_size={args.batch_size}"],
            "imdb": ["data.max_length=128", f"data.batch_size={args.imdb_batch_size}"]}[data]
    return [
        f"data={data}", f"paths.data_dir={args.data_dir}", f"paths.cache_dir={cache}",
        f"model.name_or_path={args.model_dir}", "model.from_scratch=true", *compile_opts,
        *[f"+{k}={v}" for k, v in overrides.items()],
        f"trainer=gpu" if torch.cuda.is_available() else "trainer=cpu",
        "trainer.precision=bf16-mixed" if torch.cuda.is_available() else "trainer.precision=32-true",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "test=false", "logger=csv", "scheduler=none", "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null",
        "trainer.enable_checkpointing=false",  # else Lightning's fallback checkpoint writes ~1.3 GB every epoch
        "data.group_by_length=true", "data.pad_to_multiple_of=16",
        *(["trainer.max_steps=-1", f"trainer.max_epochs={1 + args.timed_epochs}"] if timed_epoch
          else [f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1"]),
        f"+callbacks.throughput.warmup={args.warmup}",
        # compiled: time the epochs after the first, once every length bucket (and its recompile) was seen
        f"+callbacks.throughput.warmup_epochs={int(timed_epoch)}",
        # eager + --profile: profile the 5 steps just before the timed window (the profiler slows steps)
        *([PROFILER, f"+callbacks.profile.start_step={max(1, args.warmup - 6)}", "+callbacks.profile.steps=5"]
          if args.profile and not compile_model else []),
        *text, *args.override,
    ]


def run_case(args, tmp: Path, name: str, shape: str, data: str, compile_opts: list[str]) -> dict:
    torch._dynamo.reset()
    t0 = time.time()
    tp, _ = run_framework(case_overrides(args, shape, data, compile_opts, tmp / "cache"), tmp / name)
    config = AutoConfig.from_pretrained(args.model_dir, **SHAPES[shape])
    shapes = [tuple(s) for s in tp.get("shape_list", [])]
    flops = sum(training_flops(config, b, s) for b, s in shapes)
    row = {**tp, "wall_s": time.time() - t0}
    row.pop("shape_list", None)
    if peak_flops() and tp["seconds"] > 0:
        row["model_tflops_per_s"] = flops / tp["seconds"] / 1e12
        row["mfu"] = flops / tp["seconds"] / peak_flops()
    if compile_opts:
        row["compiled_graphs"] = compiled_graphs()
    if (tmp / name / "profile.json").exists():
        row["profile"] = json.loads((tmp / name / "profile.json").read_text())
    print(f"== {name}: {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="config.json + tokenizer (weights unused); default MiniLM")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--imdb-batch-size", type=int, default=64)
    parser.add_argument("--cases", default="minilm_raw,minilm,minilm_compile,bert_sst2,bert_sst2_compile,bert_imdb,bert_imdb_compile",
                        help=f"comma-separated, from minilm_raw and {', '.join(CASES)}")
    parser.add_argument("--timed-epochs", type=int, default=1, help="compiled cases: epochs timed after the warm-up epoch")
    parser.add_argument("--profile", action="store_true", help="eager cases: profile 5 steps before timing (profile.json)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every case")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.model_dir = args.model_dir or minilm_path()
    if args.smoke:
        args.steps, args.warmup, args.batch_size = 4, 1, 8
        args.data_dir = str(ROOT / "tests" / "fixtures")
    big = "tiny" if args.smoke else "bert-base"
    small = "tiny" if args.smoke else "minilm"
    cases = {name: (small if shape == "minilm" else big, data, opts) for name, (shape, data, opts) in CASES.items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "peak_bf16_flops": peak_flops(), "batch_size": args.batch_size, "steps_timed": args.steps - args.warmup}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.cases.split(","):
            if name == "minilm_raw":
                overrides = [o for o in case_overrides(args, small, "sst2", [], tmp / "cache")
                             if "throughput" not in o and "profile" not in o]
                row = raw_loop(overrides, tmp / name, args.steps, args.warmup, device=device, bf16=device == "cuda")
                row.pop("shape_list", None)
                print(f"== {name}: {json.dumps(row)}", flush=True)
                results[name] = row
            elif not args.smoke or not (cases[name][2] or "imdb" in name):
                # smoke: no inductor builds on CPU (slow), no IMDb fixture
                try:
                    results[name] = run_case(args, tmp, name, *cases[name])
                except Exception as err:  # keep measuring the other cases; report what broke
                    results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
                    print(f"== {name}: FAILED {results[name]['error']}", flush=True)
    if "minilm_raw" in results and "minilm" in results:
        results["framework_over_raw"] = results["minilm"]["samples_per_s"] / results["minilm_raw"]["samples_per_s"]
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
