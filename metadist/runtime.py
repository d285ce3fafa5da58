"""Process-wide settings made once when a metadist process starts (the CLI, a task worker, the parameter server),
and how a process hears that it is being stopped (SIGTERM).

The learning maths holds no process state; what a process as a whole should do, it is told here, once.

The C heap. glibc's malloc returns large freed blocks to the OS, so each training step's activations (megabytes per
tensor, 100 MB for a 30-way episode) come back as fresh pages: a page fault and a page of zeroing per 4 KB. Before this
setting was made at start-up for every learner, ProtoNet 20-way spent 37% of its CPU time in the kernel (154,000
minor faults a step) and Matching 48%; with it, every job measured spends 1-3% (bench/process_faults.py,
docs/benchmarks.md). mallopt keeps blocks up to 32 MiB (glibc's ceiling for the mmap threshold) on the heap, turns
mmap off for larger ones (so they come from the heap too), and leaves the heap untrimmed below 1 GiB. The cost:
resident memory stays at its peak instead of breathing every step (ProtoNet 20-way: 1.6 GB against 1.2 GB).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import platform
import signal
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # <malloc.h>
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Have this process's C heap keep freed memory for reuse (glibc only; once per process). True if applied."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    applied = bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        # glibc caps the mmap threshold at 32 MiB, and a 30-way episode's activations are 100 MB tensors: they would
        # still be mapped and unmapped every step. No mmap at all keeps every block on the heap for reuse.
        and libc.mallopt(_M_MMAP_MAX, 0)
    )
    log.debug("C heap keeps freed memory: %s", applied)
    return applied


def configure_process(threads: int | None = None) -> None:
    """What every metadist process does first: the allocator setting, and torch's intra-op threads when given."""
    retain_freed_memory()
    if threads:
        import torch

        torch.set_num_threads(threads)


# -- preemption ------------------------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: what Kubernetes eviction, `ray job stop` and batch schedulers send before they kill. A
    KeyboardInterrupt, so every path that saves and marks a run KILLED on Ctrl-C does the same for it."""

    exit_code = 128 + signal.SIGTERM  # 143, the status a process ended by SIGTERM reports


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (once: a second SIGTERM while the checkpoint
    is being written is ignored, so the save finishes; SIGKILL still ends the process). Does nothing outside the
    main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.warning("SIGTERM: stopping after saving a checkpoint")
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
