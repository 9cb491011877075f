"""The bench scripts run end to end in --smoke mode (tiny model, fixture rows): correctness only,
no timing assertions."""

import json
import os
import time

import pytest
import torch

from conftest import FIXTURES, run_script


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
    # each scope compiled its one dynamic-shape graph, cold, in its own process
    assert all(r["compile"][scope]["graphs"] == 1 and r["compile"][scope]["compile_s"] > 0 for scope in ("model", "layers"))
    assert set(r["host"]["ms_per_step"]) == {"raw", "lightning_bare", "lightning_bare_manual", "framework",
                                              "framework_train_metrics_false"}
    assert all(v > 0 for v in r["host"]["ms_per_step"].values())
    assert all(v["main"] > 0 for v in r["host"]["thread_cpu_ms_per_step"].values())
    # the loop's step in a bare Lightning Trainer dispatches about what the loop does; the framework more
    # (loss sums, NaN guard), its training-batch metrics more again
    ops = r["host"]["ops_per_step"]
    assert ops["raw"] <= ops["lightning_bare"] < ops["framework_train_metrics_false"] < ops["framework"]
    assert ops["raw"] <= ops["lightning_bare_manual"] < ops["framework_train_metrics_false"]


def test_costs_bench_smoke(tmp_path) -> None:
    out = tmp_path / "costs.json"
    proc = run_script("bench/costs.py", "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["peft"]["s_per_step"]) == {"full", "lora_query_value", "lora_all_linear"}
    assert all(v > 0 for v in r["peft"]["s_per_step"].values())
    assert r["spans"]["tensor_ms"] > 0 and r["spans"]["host_ms"] > 0  # and their counts agreed (else rc 1)


def test_gpu_bench_smoke_on_cpu(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    proc = run_script("bench/gpu.py", "--smoke", "--profile", "--cases",
                      "minilm_raw,minilm_bare,minilm,minilm_raw_graphs,minilm_bare_manual_graphs,"
                      "minilm_graphs,minilm_graphs_lean,minilm_raw+host,minilm_bare+host,minilm+host", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["minilm"]["samples_per_s"] > 0 and r["framework_over_raw"] > 0
    assert r["bare_over_raw"] > 0 and r["framework_over_bare"] > 0  # Lightning's share, the configuration's share
    assert r["minilm_bare_manual_graphs"]["steps"] == r["minilm_raw_graphs"]["steps"] > 0  # manual optimization steps
    assert r["warm_process_s"] > 0  # the untimed warm-up ran before the first case
    # each row names what ran beside the step: the lean case drops the framework's NaN guard, progress and
    # logging (loggers, LR monitor, step values); the bare Trainer has the meter alone
    full, lean = r["minilm"]["trainer"], r["minilm_graphs_lean"]["trainer"]
    assert full["on_nan"] == "stop" and full["loggers"] and {"LogProgress", "LearningRateMonitor"} <= set(full["callbacks"])
    assert lean["on_nan"] == "off" and not lean["loggers"] and lean["log_every_n_steps"] > r["minilm"]["steps"]
    assert not {"LogProgress", "LearningRateMonitor", "TQDMProgressBar", "GarbageCollection"} & set(lean["callbacks"])
    assert r["minilm_bare"]["trainer"]["callbacks"] == ["ThroughputMeter"]
    assert r["minilm_graphs_lean_over_graphs"] > 0  # the case beside the framework's own
    for case in ("minilm", "minilm_raw"):  # the host's CPU beside the wall time, on the main thread at least
        assert 0 < r[case]["thread_cpu_ms_per_step"]["main"] <= 1.5 * r[case]["ms_per_step"], r[case]
    # probes are their own runs, after the timed ones: no timed case runs profiled
    assert list(r)[-1] == "minilm+profile" and "profile" not in r["minilm"] and "host_profile" not in r["minilm"]
    profile = r["minilm+profile"]["profile"]
    assert profile["steps"] >= 1 and profile["top_ops"]  # smoke: the run ends first
    # host time by package: Lightning's share is the framework's, never the hand-written loop's
    framework, bare, loop = (r[k]["host_profile"]["by_owner_ms_per_step"]
                             for k in ("minilm+host", "minilm_bare+host", "minilm_raw+host"))
    assert framework["lightning"] > 0 and bare["lightning"] > 0 and "lightning" not in loop
    assert framework["torch (C++)"] > 0 and loop["torch (C++)"] > 0


def test_bare_lightning_manual_optimization_trains_a_compiled_model_under_bf16(tmp_path) -> None:
    """The GPU case minilm_bare_manual_graphs (bf16-mixed, compiled model): backward of a compiled graph
    inside the precision plugin's autocast raised "expected scalar type Float but found BFloat16"."""
    from bench.baselines import bare_lightning

    overrides = ["model=tiny", f"paths.data_dir={FIXTURES}", "data.train_limit=64", "data.batch_size=16",
                 "trainer=cpu", "model.compile=true", "model.compile_backend=aot_eager"]
    result = bare_lightning(overrides, tmp_path, steps=4, warmup=1, bf16=True, manual=True)
    assert result["steps"] == 4  # timed steps, after the warm-up one


def test_startup_bench_smoke(tmp_path) -> None:
    """The start-up stages in pipeline order, each timed once, inside the stage process's wall time; the
    second preparation finds the tokens the first one cached."""
    out = tmp_path / "startup.json"
    proc = run_script("bench/startup.py", "--smoke", "--cache-dir", str(tmp_path / "tokens"), "--profile-stages",
                      "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    stages = r["stages_s"]
    assert list(stages)[:4] == ["import torch", "import transformers", "import lightning",
                                "import tunelab.pipeline (the rest)"]
    assert {"data: prepare (the cache as found)", "model: load", "trainer"} <= set(stages)
    assert all(s >= 0 for s in stages.values()) and r["stages_total_s"] < r["process_wall_s"]
    assert stages["import torch"] > 0.1 and r["import_self_s_by_package"]["torch"] > 0.1
    assert stages["data: prepare (warm cache)"] < stages["data: prepare (the cache as found)"]
    assert any((tmp_path / "tokens").iterdir())  # --cache-dir is where the tokens went
    assert r["cpus"] == len(os.sched_getaffinity(0))  # the cores a cold run's tokenizer ran on
    assert set(r["bytecode_before_imports"]) == {"torch", "transformers", "lightning"}
    # --profile-stages: the stages after the imports, each with its slowest calls (none of this script's own)
    profiled = r["profiled_stages"]
    assert set(profiled) == {s for s in stages if not s.startswith("import")}
    slowest = profiled["model: load"]["slowest_calls"]
    assert slowest and "build_model" in " ".join(c["function"] for c in slowest)
    assert not any("startup.py" in c["function"] for p in profiled.values() for c in p["slowest_calls"])


def test_startup_bench_tells_whether_imports_find_their_bytecode(tmp_path, monkeypatch) -> None:
    """A package without __pycache__ is compiled from source at every import where its directory is
    read-only: the start-up result says so, looked up without importing the package."""
    import py_compile

    from bench.startup import bytecode_state

    package = tmp_path / "pkg_without_bytecode"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = bytecode_state(("pkg_without_bytecode", "no_such_package"))
    assert set(before) == {"pkg_without_bytecode"}
    assert before["pkg_without_bytecode"]["cached"] is False and before["pkg_without_bytecode"]["writable"] is True
    py_compile.compile(str(package / "__init__.py"))  # where the import would have written it
    assert bytecode_state(("pkg_without_bytecode",))["pkg_without_bytecode"]["cached"] is True


def test_throughput_meter_times_only_epochs_after_warmup_epochs(run_cfg) -> None:
    # bench/gpu.py times compiled models only in the second epoch, after every recompile
    _, run_dir = run_cfg("data.train_limit=64", "data.batch_size=8", "data.val_fraction=0.1", "trainer.max_epochs=2",
                         "test=false", "+callbacks.throughput._target_=bench.meters.ThroughputMeter",
                         "+callbacks.throughput.warmup=0", "+callbacks.throughput.warmup_epochs=1")
    timed = json.loads((run_dir / "throughput.json").read_text())
    assert timed["steps"] == 8 and timed["samples_per_s"] > 0  # 64 rows / 8 = epoch 2's steps only
    assert timed["graphs_compiled_while_timed"] == 0


def test_throughput_meter_stops_the_clock_at_epoch_ends_and_ends_the_run(run_cfg, monkeypatch) -> None:
    """A small dataset crosses epoch ends inside the timed steps: the clock is stopped while the epoch
    ends (validation here), resumes with the next training batch, and the meter ends the run after its
    steps."""
    from bench.meters import ThroughputMeter
    from tunelab.module import TransformerModule

    clock_running = []  # at each validation, after the callbacks' hooks

    def record(module) -> None:
        meters = [c for c in module.trainer.callbacks if isinstance(c, ThroughputMeter)]
        clock_running.append((meters[0].started, meters[0]._resumed_at is not None))

    monkeypatch.setattr(TransformerModule, "on_validation_start", record)
    metrics, run_dir = run_cfg(
        "data.train_limit=64", "data.batch_size=8", "trainer.max_epochs=10", "trainer.min_epochs=0", "test=false",
        "trainer.num_sanity_val_steps=0", "+callbacks.throughput._target_=bench.meters.ThroughputMeter",
        "+callbacks.throughput.warmup=2", "+callbacks.throughput.steps=12")
    timed = json.loads((run_dir / "throughput.json").read_text())
    assert timed["steps"] == 12 and timed["timed_segments"] == 2  # steps 2-13 of 8-step epochs
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 14
    assert clock_running[0] == (True, False), "the validation at the end of epoch 1 was timed"


def test_step_profiler_reports_busy_fraction_and_top_ops(run_cfg) -> None:
    _, run_dir = run_cfg("data.train_limit=64", "data.batch_size=8", "trainer.max_epochs=1", "test=false",
                         "+callbacks.profile._target_=bench.profiler.StepProfiler",
                         "+callbacks.profile.start_step=2", "+callbacks.profile.steps=3",
                         # every op listed: the tiny model's matmuls need not be among the 15 slowest on a busy CPU
                         "+callbacks.profile.top=1000")
    prof = json.loads((run_dir / "profile.json").read_text())
    assert prof["steps"] == 3 and prof["device"] == "cpu"
    assert 0 < prof["busy_ms_per_step"] <= prof["wall_ms_per_step"] and 0 < prof["busy_fraction"] <= 1
    assert any("addmm" in op["op"] or "mm" in op["op"] for op in prof["top_ops"])  # the matmuls show up


def test_busy_time_is_device_work_only_with_overlaps_merged() -> None:
    """An annotation spanning the whole step (how CUDA shows `Optimizer.step#AdamW.step`) is no device
    time: busy = kernels + memcpy / memset, overlapping kernels of two streams counted once."""
    from bench.profiler import Event, summarize

    events = [Event("Optimizer.step#AdamW.step", "annotation", 0, 1000, 1000),
              Event("ProfilerStep#1", "annotation", 0, 1000, 1000),
              Event("ampere_sgemm", "kernel", 0, 100, 100), Event("fused_adamw", "kernel", 50, 200, 150),
              Event("Memcpy HtoD", "memcpy", 300, 400, 100), Event("cudaStreamWaitEvent", "other", 400, 900, 500)]
    prof = summarize(events, wall_s=1e-3, steps=1, device="cuda")
    assert prof["busy_ms_per_step"] == pytest.approx(0.3) and prof["busy_fraction"] == pytest.approx(0.3)
    assert [op["op"] for op in prof["top_ops"]] == ["fused_adamw", "ampere_sgemm", "Memcpy HtoD"]


def test_cpu_profile_counts_no_record_function_region_as_op_time() -> None:
    """A record_function region that waits 60 ms around one small matmul: the region is an annotation,
    the busy time is the matmul's, not the region's."""
    import time

    from bench.profiler import summarize, timeline

    x = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        with torch.profiler.record_function("Optimizer.step#AdamW.step"):
            time.sleep(0.06)
            x @ x
        wall = time.perf_counter() - t0
    events = timeline(prof, "cpu")
    assert {e.kind for e in events if e.name == "Optimizer.step#AdamW.step"} == {"annotation"}
    assert any(e.kind == "cpu_op" and e.name == "aten::mm" for e in events)
    summary = summarize(events, wall, steps=1, device="cpu")
    assert summary["busy_ms_per_step"] < 30 < 60 <= summary["wall_ms_per_step"], summary
    assert "Optimizer.step#AdamW.step" not in {op["op"] for op in summary["top_ops"]}


def test_gc_timer_counts_collections_only_while_started() -> None:
    import gc

    from bench.host_time import GcTimer

    timer = GcTimer()
    timer.start()
    gc.collect()  # a full collection: generation 2
    timer.stop()
    assert timer.collections.get(2) == 1 and timer.seconds > 0
    seconds = timer.seconds
    gc.collect()  # stopped: not counted
    assert timer.collections.get(2) == 1 and timer.seconds == seconds


def test_thread_cpu_names_the_thread_a_host_bound_step_waits_behind() -> None:
    """A busy Python thread takes the GIL from the main thread: both show about half the window's CPU,
    under the busy thread's target name; a thread that sleeps shows next to none."""
    import threading

    from bench.host_time import ThreadCpu

    done, sleeping = threading.Event(), threading.Event()

    def spin() -> None:
        while not done.is_set():
            sum(range(1000))

    def sleep() -> None:
        sleeping.set()
        done.wait()

    busy = threading.Thread(target=spin)  # named "Thread-N (spin)": reported as "spin"
    idle = threading.Thread(target=sleep, name="sleeper")
    busy.start(), idle.start()
    sleeping.wait()  # its start-up is not inside the window
    cpu = ThreadCpu()
    cpu.start()
    t0 = time.thread_time()  # the main thread's own CPU, not the wall: a loaded machine gives fewer cycles
    while time.thread_time() - t0 < 0.25:
        sum(range(1000))
    cpu.stop()
    done.set()
    busy.join(), idle.join()
    ms = cpu.ms_per_step(steps=1)
    assert 100 < ms["spin"] < 500 and 100 < ms["main"] < 500, ms
    # a loaded machine may still run the sleeper's last steps into its wait inside the window: microseconds
    assert ms.get("sleeper", 0) < 1 and list(ms)[0] in ("main", "spin"), ms
    cpu.start()  # another window adds to the first
    sum(range(10**6))
    cpu.stop()
    assert cpu.ms_per_step(steps=1)["main"] > ms["main"]


def test_host_owner_names_the_package_wherever_it_is_installed() -> None:
    import json as stdlib_module

    from bench.host_time import host_owner

    assert host_owner("/venv/lib/python3.12/site-packages/lightning/pytorch/loops/loop.py", "run") == "lightning"
    assert host_owner("/usr/lib/python3/dist-packages/torch/nn/modules/module.py", "_call_impl") == "torch"
    assert host_owner(stdlib_module.__file__, "loads") == "python"
    assert host_owner("<frozen importlib._bootstrap>", "_find_and_load") == "python"
    assert host_owner("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>") == "torch (C++)"
    assert host_owner("~", "<built-in method builtins.isinstance>") == "python (C)"


def test_time_to_accuracy_smoke_times_each_point_of_a_run_start(tmp_path) -> None:
    """Every point of a run from process start, the test metric before the exit; the anchor is timed to its
    test metric from the same start, and to its exit like train.py."""
    out = tmp_path / "tta.json"
    proc = run_script("bench/time_to_accuracy.py", "--smoke", "--runs",
                      "sst2_minilm_gpu,sst2_minilm_gpu_graphs,sst2_minilm_gpu_one_shape,sst2_minilm_gpu_anchor",
                      "--override", "trainer.max_steps=2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for name in ("sst2_minilm_gpu", "sst2_minilm_gpu_graphs", "sst2_minilm_gpu_one_shape"):
        row = r[name]
        assert row["returncode"] == 0 and row["optimizer_steps"] == 2, row.get("error")
        points = [row[k] for k in ("callbacks_s", "fit_start_s", "sanity_end_s", "seconds_to_first_batch",
                                   "first_step_s", "test_metric_s", "wall_s")]
        assert 0 < points[0] and points == sorted(points)
    assert "model.compile_dynamic=false" in r["sst2_minilm_gpu_graphs"]["overrides"]
    # one shape: every batch padded to the same length, compiled once without dynamic dims
    assert r["sst2_minilm_gpu_one_shape"]["compile"]["graphs"] == 1
    assert {"data.pad_to_multiple_of=80", "model.compile_dynamic=false"} <= set(r["sst2_minilm_gpu_one_shape"]["overrides"])
    anchor = r["sst2_minilm_gpu_anchor"]
    assert anchor["returncode"] == 0 and "test/acc" in anchor, anchor.get("error")
    assert 0 < anchor["test_metric_s"] < anchor["wall_s"]


# the framework's own per-step host work over the same step in a bare Lightning Trainer, in Python calls
# (cProfile's exact counts; generator resumes count as calls): about 780 here (the NaN guard, epoch-loss sums,
# progress reports, the LR monitor, logging every 20 steps, four more callbacks in every hook round); 345 more
# with Lightning's default profiler around the hooks instead of tunelab.trainer.NoProfiler. On a GPU at small
# batches the host is the step's cost (docs/PERFORMANCE.md, "Host time per step").
HOST_CALLS_BUDGET = 1000


def test_framework_step_host_work_stays_within_budget_over_bare_lightning(tmp_path) -> None:
    """A per-step addition the size of the training-batch metric updates (about 720 calls: 1,500 in all)
    breaks the budget: the check is shown to fail on one."""
    from bench.baselines import bare_lightning
    from bench.throughput import run_framework

    # one epoch holds every counted step (150 batches of 4): no epoch end inside the window
    base = ["model=tiny", f"paths.data_dir={FIXTURES}", "trainer=cpu", "logger=csv", "scheduler=none", "test=false",
            "export=false", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
            "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "trainer.enable_checkpointing=false",
            "data.batch_size=4", "data.drop_last=true", "trainer.max_epochs=1000", "trainer.min_epochs=0",
            "trainer.max_steps=-1", "trainer.log_every_n_steps=20"]
    warmup, steps = 10, 120  # one-off work (ABC caches filled at first sight) spreads to ~30 calls a step

    def framework(*extra: str) -> float:
        summary, _ = run_framework([*base, f"+callbacks.throughput.warmup={warmup}", f"+callbacks.throughput.steps={steps}",
                                    "+callbacks.throughput.host_profile=true", *extra], tmp_path / f"fw{len(extra)}")
        return summary["host_profile"]["calls_per_step"]

    bare = bare_lightning(base, tmp_path / "bare", steps=steps, warmup=warmup, host_profile=True)["host_profile"]
    assert bare["by_owner_calls_per_step"]["lightning"] > 0
    assert bare["calls_per_step"] == pytest.approx(sum(bare["by_owner_calls_per_step"].values()))
    added = framework("train_metrics=false") - bare["calls_per_step"]  # the GPU recipes' setting
    assert 0 < added <= HOST_CALLS_BUDGET, f"the framework adds {added:.0f} Python calls per step over bare Lightning"
    with_train_metrics = framework() - bare["calls_per_step"]
    assert with_train_metrics > HOST_CALLS_BUDGET, with_train_metrics
