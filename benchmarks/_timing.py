"""Timing helpers shared by the benchmarks: median wall time of repeated calls after warm-up.

The thread count is left as torch has it (``torch.set_num_threads`` is never called), so every
contender in one process runs under the same setting.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3,
                device: torch.device | str | None = None) -> float:
    """Median seconds of one ``fn()`` call over ``repeats`` timed calls, after ``warmup`` untimed
    ones; CUDA work is synchronised around each call when ``device`` is a CUDA device."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 256 * 2**20, *, device: torch.device | str = "cpu", repeats: int = 10) -> float:
    """Measured bytes/s of copying an ``nbytes`` tensor (read + write both counted) into a buffer
    allocated once, so the figure is memory bandwidth, not the page faults of a fresh ``clone``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), repeats=repeats, device=device)
    return 2 * src.numel() * src.element_size() / seconds


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9
