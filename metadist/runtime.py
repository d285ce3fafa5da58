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

For the 84-pixel backbones that cost grows: a ResNet-12 task's activations are tensors of up to 150 MB whose freed
blocks the heap cannot always reuse for the next, larger request, so its peak resident memory is 1.4-1.9× what it is
with glibc's own settings (ProtoNet: 6.4 GB against 3.4 GB; learn2learn's loop 4.0 GB), for steps 1.3× faster
(bench/backbone_speed.py --retained). `train.retain_freed_memory` chooses; by default a job keeps freed memory except with
those backbones (JobConfig.retains_freed_memory), and the trainer sets the policy once it knows the job.
"""

from __future__ import annotations

import contextlib
import ctypes
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
RETAINED = {_M_MMAP_THRESHOLD: MMAP_THRESHOLD_BYTES, _M_TRIM_THRESHOLD: TRIM_THRESHOLD_BYTES,
            # glibc caps the mmap threshold at 32 MiB, and a 30-way episode's activations are 100 MB tensors: they
            # would still be mapped and unmapped every step. No mmap at all keeps every block on the heap for reuse.
            _M_MMAP_MAX: 0}
# Where glibc's own dynamic thresholds settle once large blocks have been freed (its mmap threshold rises to the
# largest freed mmap'd block, at most 32 MiB, and the trim threshold to twice that): setting any of them by mallopt
# turns the dynamic adjustment off, so returning to glibc's behaviour means setting where it would end up.
GLIBC_SETTLED = {_M_MMAP_THRESHOLD: MMAP_THRESHOLD_BYTES, _M_TRIM_THRESHOLD: 2 * MMAP_THRESHOLD_BYTES, _M_MMAP_MAX: 65536}


def retain_freed_memory(retain: bool = True) -> bool:
    """Have this process's C heap keep freed memory for reuse (retain), or return it to the OS as glibc does by default
    (glibc only; may be called again to switch). True if applied."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    applied = all([libc.mallopt(option, value) for option, value in (RETAINED if retain else GLIBC_SETTLED).items()])
    if not retain:
        libc.malloc_trim(0)  # what the retained heap already holds free
    log.debug("C heap keeps freed memory: %s (applied: %s)", retain, applied)
    return applied


def configure_process(threads: int | None = None, retain_memory: bool = True) -> None:
    """What every metadist process does first: the allocator setting, and torch's intra-op threads when given."""
    retain_freed_memory(retain_memory)
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
