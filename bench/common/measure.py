"""Timing and repetition: how long calls take, how often they run in a given time, and what else ran meanwhile."""

from __future__ import annotations

import os
import resource
import time
from typing import Callable


class Stopwatch:
    """Wall-clock and CPU seconds of this process since it was made (or restarted)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self._wall

    @property
    def cpu(self) -> float:
        return time.process_time() - self._cpu


def run_for(fn: Callable[[], object], seconds: float) -> tuple[int, float, float]:
    """Call fn at least once and until `seconds` have passed; (calls, elapsed seconds, CPU seconds)."""
    calls, watch = 0, Stopwatch()
    while True:
        fn()
        calls += 1
        elapsed = watch.wall
        if elapsed >= seconds:
            return calls, elapsed, watch.cpu


def measure_rate(
    fn: Callable[[], object], per_call: int, *, seconds: float, repeats: int, warmup_s: float, unit: str = "episodes"
) -> dict:
    """Call fn for warmup_s untimed, then `repeats` times for at least `seconds` each; `unit`s per second.

    cpu_per_wall: CPU time over wall time while timed, near 1 with one thread on an idle core, lower when other
    processes took the core away. minor_faults_per_call: pages the process had to map in per call, near 0 once
    its memory is reused from call to call.
    """
    run_for(fn, warmup_s)
    rates, cpu_per_wall, faults_per_call = [], [], []
    for _ in range(repeats):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        calls, elapsed, cpu_s = run_for(fn, seconds)
        faults_per_call.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / calls)
        rates.append(calls * per_call / elapsed)
        cpu_per_wall.append(cpu_s / elapsed)
    return {f"{unit}_per_s": rates, "cpu_per_wall": cpu_per_wall, "minor_faults_per_call": faults_per_call}


def memory_mb() -> dict[str, float]:
    """This process's VmHWM (peak RSS), VmRSS, RssAnon and RssFile in MiB, from /proc/self/status."""
    wanted = {"VmHWM": "peak_rss", "VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    out = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0]) / 1024  # kB → MiB
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, *, share: float, window_s: float) -> float:
    """Wait until all processes together use less than `share` of the machine over `window_s` (or max_wait_s has
    passed); the seconds waited."""
    started = time.perf_counter()
    while True:
        busy = machine_busy_s()
        time.sleep(window_s)
        used = (machine_busy_s() - busy) / (window_s * os.cpu_count())
        waited = time.perf_counter() - started
        if used < share or waited >= max_wait_s:
            return waited
