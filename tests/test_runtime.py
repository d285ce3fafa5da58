"""metadist.runtime's C heap policy (train.retain_freed_memory): kept freed memory stays resident for reuse, returned
memory leaves; and which jobs keep it by default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metadist.config import JobConfig, apply_overrides

# In a fresh process: the resident memory (MB) after a 256 MB tensor is freed, under the policy given.
FREED_RESIDENT = """
import os, sys
from metadist.runtime import configure_process
configure_process(1, sys.argv[1] == "retain")
import torch
page = os.sysconf("SC_PAGE_SIZE")
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * page / 2**20
before = resident()
x = torch.ones(64 << 20)  # 256 MB, touched
del x
print(resident() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_kept_heap_holds_freed_memory_and_a_returned_one_gives_it_back():
    def freed_resident(policy: str) -> float:
        out = subprocess.run([sys.executable, "-c", FREED_RESIDENT, policy], capture_output=True, text=True, check=True)
        return float(out.stdout)

    assert freed_resident("retain") > 200  # the 256 MB block stays on the heap for the next step's tensors
    assert freed_resident("release") < 50  # mmap'd and unmapped, as glibc does by default


def test_large_backbones_return_freed_memory_by_default():
    assert JobConfig().retains_freed_memory()
    resnet = apply_overrides(JobConfig(), ["model.name=resnet12"])
    assert not resnet.retains_freed_memory()
    assert apply_overrides(resnet, ["train.retain_freed_memory=true"]).retains_freed_memory()
    assert not apply_overrides(JobConfig(), ["train.retain_freed_memory=false"]).retains_freed_memory()
