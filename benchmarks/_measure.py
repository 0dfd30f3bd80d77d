"""Honest CPU time and peak-memory measurement for the benchmark scripts.

Peak memory is the growth of the process's resident set during one call: the kernel's
peak-RSS counter (``VmHWM``) is reset through ``/proc/self/clear_refs`` right before the
call, so allocations made earlier (imports, inputs) do not hide it. Each configuration
runs in a fresh subprocess (:func:`run_isolated`) so allocator caches of one
configuration never serve another.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak resident-set growth (MiB) while ``fn()`` runs."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_bytes("VmRSS")
    fn()
    return (_status_bytes("VmHWM") - before) / 2**20


def median_time_s(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_isolated(script: str, config: dict, timeout: float = 1800) -> dict:
    """Run ``python script --worker JSON`` in a fresh process; return its last JSON line."""
    out = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(config)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {config}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def write_results(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), **payload}, f, indent=2)
    print(f"wrote {path}")
