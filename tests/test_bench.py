"""The bench scripts run end to end in --smoke mode (tiny model, fixture rows): correctness only,
no timing assertions."""

import json

from conftest import run_script


def test_throughput_bench_smoke(tmp_path) -> None:
    out = tmp_path / "bench.json"
    proc = run_script("bench/throughput.py", "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["framework"]["framework_samples_per_s"] > 0 and r["framework"]["raw_loop_samples_per_s"] > 0
    assert set(r["padding"]) >= {"pad_to_max", "dynamic", "dynamic_grouped"}
    # pad-to-max really pads to max_length; dynamic padding wastes less
    assert r["padding"]["pad_to_max"]["padding_fraction"] > r["padding"]["dynamic"]["padding_fraction"]
    assert r["startup"]["logger=csv"] > 0
    assert r["cache"]["tokenizations"] == r["cache"]["files"]  # the second preparation re-tokenized nothing


def test_gpu_bench_smoke_on_cpu(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    proc = run_script("bench/gpu.py", "--smoke", "--cases", "minilm_raw,minilm", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["minilm"]["samples_per_s"] > 0 and r["framework_over_raw"] > 0
