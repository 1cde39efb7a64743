"""Wall-clock timing of models side by side: alternating runs, medians, the device's name.

Timing two models one after the other lets the machine drift (clock boost, other jobs, caches)
between them; timing them alternately (A, B, A, B, ...) gives both the same conditions, and the
median of the repeats ignores the occasional outlier.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Mapping

import torch


def clock(device: torch.device) -> Callable[[], float]:
    """``time.perf_counter``, synchronising a CUDA device first so that queued kernels are counted."""
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.perf_counter


def time_alternately(runs: Mapping[str, Callable[[], object]], *, device: torch.device,
                     warmup: int = 3, repeats: int = 10) -> dict[str, list[float]]:
    """Seconds per call of each run, called in turn ``repeats`` times after ``warmup`` rounds.

    Call it inside ``torch.inference_mode()`` (and any autocast) the runs should see.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    now = clock(device)
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = now()
            fn()
            times[name].append(now() - start)
    return times


def per_second(items: int, seconds: list[float]) -> float:
    """Throughput from the median of timings of a call that handles ``items`` items."""
    return items / statistics.median(seconds)


def device_name(device: torch.device) -> str:
    """A readable name: the GPU's, or the CPU's with the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
