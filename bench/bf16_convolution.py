"""bf16 against fp32 on this machine's CPU: one convolution at ResNet-12's first-block size (80 images of 64 channels
at 84×84, 3×3, 64 filters), forward only, median of 3 after one warm-up, 2 threads.

    .venv/bin/python bench/bf16_convolution.py

Why: `train.precision: bf16` pays off on GPUs and on CPUs with AMX or AVX-512 BF16 instructions; on a CPU that
has only AVX2 torch falls back to slow bf16 kernels. This prints which this CPU is and what one convolution costs in
each dtype (the figures in docs/benchmarks.md, "## Backbones: bf16 on this CPU").
"""

from __future__ import annotations

import statistics
import time

import torch


def main() -> None:
    torch.set_num_threads(2)
    x, w = torch.randn(80, 64, 84, 84), torch.randn(64, 64, 3, 3)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = x.to(dtype), w.to(dtype)
        torch.nn.functional.conv2d(a, b, padding=1)
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            torch.nn.functional.conv2d(a, b, padding=1)
            runs.append(time.perf_counter() - started)
        times[str(dtype).removeprefix("torch.")] = statistics.median(runs)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
          + f"; bf16 / fp32 = {times['bfloat16'] / times['float32']:.1f}")


if __name__ == "__main__":
    main()
