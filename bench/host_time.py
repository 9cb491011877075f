"""Where a training step's host time goes, for the bench scripts: Python's garbage collector (GcTimer),
each thread's CPU time (ThreadCpu), cProfile's self time by owning package (HostProfile), and the tensor
ops one step dispatches (OpCount, StepOps). On a GPU that waits for the host these are the step's cost."""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils._python_dispatch import TorchDispatchMode


class GcTimer:
    """Time spent in Python's cyclic garbage collector while started, and its collections by generation:
    host time a step pays for the objects the code around it allocates (a full collection walks every
    live container, data sets held as Python lists included)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections: dict[int, int] = {}
        self._began: float | None = None

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        self._began = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.seconds += time.perf_counter() - self._began
            self.collections[info["generation"]] = self.collections.get(info["generation"], 0) + 1
            self._began = None


class ThreadCpu:
    """CPU seconds of each thread of this process while started, by thread name ("main", a Python thread's
    target such as "_pin_memory_loop", else the OS name: "pt_autograd_0" runs backward on CUDA device 0,
    "unnamed native" sums the threads that never named themselves, such as the OpenMP intra-op pool). A
    host-bound step whose threads together use much less CPU than its wall time is waiting: on the device
    (a sync), on the GIL or on data; a busy thread beside "main" is what it waits behind. Linux reads every
    thread (/proc/self/task, nanoseconds where schedstat exists; a thread that ends inside a window loses
    that window's share); elsewhere only the thread that calls start and stop."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._began: dict[int, tuple[str, float]] | None = None

    def start(self) -> None:
        self._began = thread_cpu_seconds()

    def stop(self) -> None:
        if self._began is None:
            return
        for tid, (name, cpu) in thread_cpu_seconds().items():
            began = self._began.get(tid, (name, 0.0))[1]  # a thread started inside the window: all of it
            self.seconds[name] = self.seconds.get(name, 0.0) + cpu - began
        self._began = None

    def ms_per_step(self, steps: int) -> dict[str, float]:
        """Milliseconds per step by thread name, busiest first (threads that used no CPU left out)."""
        ranked = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return {name: 1e3 * s / max(steps, 1) for name, s in ranked if s > 0}


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every thread's (name, CPU seconds so far), by native thread id (see ThreadCpu)."""
    python_names = {t.native_id: _python_thread_name(t) for t in threading.enumerate()}
    python_names[threading.main_thread().native_id] = "main"
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        inherited = _os_thread_name(threading.main_thread().native_id)
    except OSError:  # no procfs: the calling thread only
        return {threading.get_native_id(): (python_names.get(threading.get_native_id(), "main"), time.thread_time())}
    out = {}
    for tid in tids:
        try:
            name = python_names.get(tid) or _os_thread_name(tid)
            # threads that never named themselves (the OpenMP / intra-op pool) carry the process's name
            out[tid] = ("unnamed native" if name == inherited else name, _task_cpu_seconds(tid))
        except OSError:  # the thread ended between the listing and the read
            continue
    return out


def _python_thread_name(thread: threading.Thread) -> str:
    # "Thread-3 (_pin_memory_loop)": the target names what it does, the counter differs per run
    match = re.fullmatch(r"Thread-\d+ \((.+)\)", thread.name)
    return match.group(1) if match else thread.name


def _os_thread_name(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/comm") as f:
        return f.read().strip()


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _task_cpu_seconds(tid: int) -> float:
    try:  # time on a CPU in nanoseconds (kernels with scheduler statistics)
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime, in clock ticks


class HostProfile:
    """Where the host's time goes, by owning package: cProfile's self time of every Python function and
    C call, summed per owner (lightning, tunelab, transformers, torch's Python, torch's C++ calls, the
    standard library, ...). On a GPU that waits for the host (busy fraction well below 1) the step time
    is this time, so the framework's owners beside a hand-written loop's show where its extra time goes.
    cProfile slows Python calls (C calls much less), so the shares are what to read, not the totals; and
    it sees only frames entered while enabled, so the own time of a loop that was already running when it
    started (the hand-written loop's body, Lightning's outer loop) is not counted. The calls per step by
    owner are exact counts, the same in every run of the same code: they compare two paths' host work
    where timings on a busy or small machine spread too wide to."""

    def __init__(self) -> None:
        import cProfile

        self._profile = cProfile.Profile()

    def start(self) -> None:
        self._profile.enable()

    def stop(self) -> None:
        self._profile.disable()

    def summary(self, steps: int, top: int = 15) -> dict[str, Any]:
        import pstats

        if not self._profile.getstats():  # nothing timed (pstats refuses an empty profile)
            return {"steps": steps, "ms_per_step": 0.0, "by_owner_ms_per_step": {}, "calls_per_step": 0.0,
                    "by_owner_calls_per_step": {}, "top_functions": []}
        stats = pstats.Stats(self._profile).stats  # (file, line, name) -> (calls, ncalls, self s, cum s, ...)
        owners: dict[str, float] = {}
        owner_calls: dict[str, int] = {}
        ranked = []
        roots = _import_roots()  # once, not per profiled function
        for (file, line, name), (_, calls, self_s, _, _) in stats.items():
            owner = host_owner(file, name, roots)
            owners[owner] = owners.get(owner, 0.0) + self_s
            owner_calls[owner] = owner_calls.get(owner, 0) + calls
            ranked.append((self_s, calls, f"{owner}: {Path(file).name}:{line}({name})" if file != "~" else name))
        steps = max(steps, 1)
        ranked.sort(reverse=True)
        return {
            "steps": steps,
            "ms_per_step": 1e3 * sum(owners.values()) / steps,
            "by_owner_ms_per_step": {o: 1e3 * s / steps for o, s in sorted(owners.items(), key=lambda kv: -kv[1])},
            "calls_per_step": sum(owner_calls.values()) / steps,
            "by_owner_calls_per_step": {o: n / steps for o, n in sorted(owner_calls.items(), key=lambda kv: -kv[1])},
            "top_functions": [{"function": f[:140], "calls_per_step": n / steps, "self_ms_per_step": 1e3 * s / steps}
                              for s, n, f in ranked[:top]],
        }


def host_owner(file: str, function: str, roots: list[str] | None = None) -> str:
    """The package a profiled function belongs to: the first path component under site- or dist-packages,
    else under the longest import root (sys.path: the project's src/, a `pip --target` dir), a module file
    directly on a root naming itself; the standard library and frozen modules are "python". C calls (file
    "~") are torch's when their name says so (`{method 'run_backward' of 'torch._C._EngineBase' objects}`)."""
    if file == "~":
        return "torch (C++)" if "torch" in function else "python (C)"
    path = os.path.abspath(file).replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(_STDLIB + "/") or file.startswith("<"):
        return "python"
    for root in _import_roots() if roots is None else roots:
        if path.startswith(root + "/"):
            first, _, rest = path[len(root) + 1:].partition("/")
            if rest:  # a package dir; a lone module file on a script's own dir (bench/x.py) tries the next root
                return first
    return "python"


_STDLIB = os.path.abspath(sysconfig.get_paths()["stdlib"]).replace("\\", "/")


def _import_roots() -> list[str]:
    """sys.path's entries, longest first (the most specific root of a file wins)."""
    roots = {os.path.abspath(p).replace("\\", "/") for p in sys.path if p}
    return sorted(roots, key=len, reverse=True)


class OpCount(TorchDispatchMode):
    """Counts the tensor ops dispatched while active (after autograd: what runs on the device, where each is
    a kernel launch or more). Backward ops count where the autograd engine runs them on this thread: on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class StepOps(pl.Callback):
    """The ops of training step `step` (on_train_batch_start to on_train_batch_end: forward, loss, metric
    updates, backward, optimizer, the callbacks' per-step work), in <run dir>/step_ops.json."""

    def __init__(self, step: int = 21) -> None:
        self.step = step
        self._count: OpCount | None = None
        self.ops: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.ops is None:
            self._count = OpCount()
            self._count.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._count is None:
            return
        self._count.__exit__(None, None, None)
        self.ops, self._count = self._count.ops, None
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "step_ops.json").write_text(json.dumps(self.ops))
