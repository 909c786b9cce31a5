"""The one timing helper of every benchmark: contenders take turns, with equal warm-ups and runs.

    timings = interleaved({"captum": run_captum, "ours": run_ours}, runs=5, warmup=1)
    timings["ours"].median        # seconds; .runs, .warmup, .times, .cpu_median as well

Every contender gets the same number of untimed warm-up calls and of timed calls. The timed calls
are interleaved (round ``r`` calls every contender once, the order rotating from round to round),
so a machine that speeds up or slows down over minutes (a shared VM) moves all contenders alike
instead of whichever happened to run during the drift. The median is reported. The thread count is
left as torch has it (``torch.set_num_threads`` is never called here), so all contenders in one
process run under the same setting.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall seconds (and this process's CPU seconds) of each timed call of one contender."""

    times: tuple[float, ...]
    cpu_times: tuple[float, ...]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)

    @property
    def runs(self) -> int:
        return len(self.times)


def interleaved(contenders: dict[str, Callable[[], object]], *, runs: int, warmup: int = 1,
                device: torch.device | str | None = None, progress: bool = False) -> dict[str, Timing]:
    """``{name: Timing}`` of every contender: ``warmup`` untimed calls each, then ``runs`` rounds in
    which each is called once (the order rotated each round); CUDA work is synchronised around each
    call when ``device`` is a CUDA device. ``progress`` prints one line per timed call (long rows)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if not contenders:
        raise ValueError("contenders must name at least one callable")
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    _sync(device)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_ in range(runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            if progress:
                print(f"  round {round_ + 1}/{runs} {name}: {wall[name][-1]:.3f} s", flush=True)
    return {name: Timing(tuple(wall[name]), tuple(cpu[name]), warmup) for name in names}


def median_time(fn: Callable[[], object], *, runs: int = 20, warmup: int = 3,
                device: torch.device | str | None = None) -> float:
    """Median seconds of one ``fn()`` call (a single contender: a floor or a bandwidth probe)."""
    return interleaved({"fn": fn}, runs=runs, warmup=warmup, device=device)["fn"].median


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9
