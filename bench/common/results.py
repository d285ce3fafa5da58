"""Where figures go: a worker process's one result line, bench/results/*.json, and what a record says about the
machine and the code it was measured on."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Iterable

from . import BENCH_DIR, REPO
from .docs import DOC_PATH, replace_section

RESULT_MARK = "@@bench-result "  # prefixes the one JSON line a worker process prints
RESULTS_DIR = BENCH_DIR / "results"


def emit(result: dict) -> None:
    """Print `result` as a worker's result line."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def parse_result(line: str) -> dict | None:
    """The result of a worker's result line; None for any other line."""
    return json.loads(line[len(RESULT_MARK):]) if line.startswith(RESULT_MARK) else None


def last_result(output: str) -> dict | None:
    """The last result line in a worker's whole output, or None."""
    results = [r for r in map(parse_result, output.splitlines()) if r is not None]
    return results[-1] if results else None


def worker_env(threads: int) -> dict[str, str]:
    """This process's environment for a worker process with `threads` OpenMP threads and no Python warnings."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}


def run_worker(command: list[str], *, env: dict | None = None, cwd: Path = REPO, capture_stderr: bool = True) -> dict:
    """Run a worker process to its end and return its last result line. RuntimeError if it fails or prints none,
    with the end of its stderr when captured (otherwise its stderr goes where this process's goes)."""
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_stderr else None, text=True, env=env, cwd=cwd
    )
    result = last_result(done.stdout)
    if done.returncode != 0 or result is None:
        raise RuntimeError(f"worker failed (exit {done.returncode}): {' '.join(command)}\n{(done.stderr or '')[-4000:]}")
    return result


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def load_json(path: Path, default=None):
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def write_json(path: Path, data, *, sort_keys: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def add_output_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """--results (the JSON file, default `results`) and --doc (the Markdown file whose section is replaced)."""
    parser.add_argument("--results", type=Path, default=results, help="JSON output")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="Markdown file whose section is replaced")


def publish(report: dict, results: Path, section: str, heading: str, doc: Path | None) -> None:
    """Write `report` to `results` and `section` into `doc` (unless None) in place of its `heading` section; print
    the section and what was written (report["elapsed_s"] is the run's length)."""
    write_json(results, report)
    if doc is not None:
        replace_section(doc, heading, section)
    print(section)
    print(f"wrote {results}" + ("" if doc is None else f" and the section {heading!r} of {doc}") + f" ({report['elapsed_s']:.0f} s)")


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")


def machine_info(*, load: dict | None = None, **extra) -> dict:
    """date (UTC), the `load` figures given, CPU model, cores, Python and torch versions, then `extra`."""
    import torch

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(load or {}),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
    }


def source_hashes(names: Iterable[str], under: str = "metadist") -> dict[str, str]:
    """SHA-256 prefixes of the measured sources (REPO/under/name): which version of the code figures belong to."""
    return {name: hashlib.sha256((REPO / under / name).read_bytes()).hexdigest()[:16] for name in names}
