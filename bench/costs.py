"""What a feature costs per training step on CPU, each variant measured side by side in this one invocation:

  peft   seconds per step of full fine-tuning vs LoRA on query,value vs LoRA on every linear layer
         (experiment=sst2_minilm's model and data, batch 32, SST-2 lengths), alternating rounds
  spans  entity-span decoding of one 32 x 48 NER batch: EntityCounts' tensor ops vs the same rule on the host
         (span_metrics.spans per sentence after .tolist(), what a metric needing no GPU sync replaces)

OMP_NUM_THREADS=1 python bench/costs.py            # both (~8 min on 2 cores)
python bench/costs.py --only spans                 # one part
python bench/costs.py --smoke                      # tiny model, fixture rows: correctness only (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.throughput import base_overrides, run_framework  # noqa: E402
from tunelab.span_metrics import EntityCounts, spans  # noqa: E402

PEFT_VARIANTS = {
    "full": [],
    "lora_query_value": ["peft=lora", "peft.target_modules=[query,value]"],
    # experiment=sst2_minilm_lora's targets: "dense" is the attention output, intermediate, output and pooler
    "lora_all_linear": ["peft=lora", "peft.target_modules=[query,key,value,dense]"],
}
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def bench_peft(smoke: bool, tmp: Path) -> dict:
    """Seconds per step of each variant, best of `reps` alternating rounds (a slow drift of the machine hits
    every variant alike); the steps before `warmup` are not timed."""
    steps, warmup, reps = (4, 1, 1) if smoke else (12, 2, 2)
    overrides = [*base_overrides(smoke, tmp / "cache"), f"trainer.max_steps={steps}", "test=false", "export=false",
                 f"+callbacks.throughput.warmup={warmup}"]
    runs: dict[str, list[float]] = {name: [] for name in PEFT_VARIANTS}
    for rep in range(reps):
        for name, extra in PEFT_VARIANTS.items():
            summary = run_framework([*overrides, *extra], tmp / f"peft_{name}{rep}")[0]
            runs[name].append(summary["ms_per_step"] / 1000)
    best = {name: min(v) for name, v in runs.items()}
    return {"s_per_step": best, "runs": runs, "steps_timed": steps - warmup, "torch_threads": torch.get_num_threads(),
            **{f"{name}_over_full": s / best["full"] for name, s in best.items() if name != "full"}}


def bench_spans(smoke: bool, batch: int = 32, length: int = 48) -> dict:
    """Median ms to count one batch's entities, after warm-up: tensor decoding vs host decoding, which must
    agree on every count."""
    reps = 5 if smoke else 200
    gen = torch.Generator().manual_seed(0)
    gold = torch.randint(0, len(TAGS), (batch, length), generator=gen)
    pred = torch.where(torch.rand(gold.shape, generator=gen) < 0.7, gold,
                       torch.randint(0, len(TAGS), gold.shape, generator=gen))
    gold[torch.rand(gold.shape, generator=gen) < 0.25] = -100  # sub-tokens, padding: not scored
    metric = EntityCounts(TAGS, "counts")
    types = metric.types

    def on_device() -> torch.Tensor:
        metric.reset()
        metric.update(pred, gold)
        return metric.compute()

    def on_host() -> torch.Tensor:
        counts = torch.zeros(3, len(types), dtype=torch.long)
        for p_row, g_row in zip(pred.tolist(), gold.tolist()):
            kept = [i for i, g in enumerate(g_row) if g != -100]
            g_spans, p_spans = spans([TAGS[g_row[i]] for i in kept]), spans([TAGS[p_row[i]] for i in kept])
            for row, found in enumerate((g_spans & p_spans, p_spans, g_spans)):
                for kind, *_ in found:
                    counts[row, types.index(kind)] += 1
        return counts

    out: dict = {"batch": [batch, length], "reps": reps, "torch_threads": torch.get_num_threads()}
    for name, fn in (("tensor_ms", on_device), ("host_ms", on_host)):
        for _ in range(max(2, reps // 10)):  # warm-up: first-call allocations and dispatch caches
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = statistics.median(times)
    if not torch.equal(on_device(), on_host()):
        raise SystemExit("tensor and host span decoding disagree")
    out["host_over_tensor"] = out["host_ms"] / out["tensor_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="spans,peft")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for part in args.only.split(","):
            if part == "peft":
                results[part] = bench_peft(args.smoke, Path(tmpdir))
            elif part == "spans":
                results[part] = bench_spans(args.smoke)
            else:
                raise SystemExit(f"unknown part {part!r}; use peft, spans")
            print(f"== {part}\n{json.dumps(results[part], indent=2)}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
