"""The learn2learn peer the benchmarks compare against: its virtualenv's interpreter, how a report names it, and the
bundled Omniglot images extracted as folders for it."""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

L2L_DEFAULT = "/tmp/l2l-venv/bin/python"
SETUP_L2L = "../shared/peers/setup-learn2learn.sh"  # from the repository root


def add_l2l_argument(parser: argparse.ArgumentParser, what: str = "interpreter of the learn2learn virtualenv") -> None:
    """--l2l-python, defaulting to $L2L_PYTHON, else L2L_DEFAULT."""
    parser.add_argument(
        "--l2l-python",
        default=os.environ.get("L2L_PYTHON", L2L_DEFAULT),
        help=f"{what} (default: $L2L_PYTHON, else {L2L_DEFAULT}; build it with {SETUP_L2L})",
    )


def resolve_l2l_python(path: str) -> str | None:
    """`path` if it is an interpreter; else None, saying on stderr how to build one."""
    if os.access(path, os.X_OK):
        return path
    print(
        f"learn2learn side SKIPPED: no interpreter at {path}.\n"
        f"  Build it with {SETUP_L2L} [VENV_DIR] (from the repository root, about 2 minutes), then pass "
        "--l2l-python VENV_DIR/bin/python or set L2L_PYTHON.",
        file=sys.stderr,
    )
    return None


def l2l_line(versions: dict | None) -> str:
    """How a report names the learn2learn side: its versions, or why it did not run."""
    if versions:
        return f"learn2learn {versions['learn2learn']} with torch {versions['torch']}, torchvision {versions['torchvision']}"
    return f"learn2learn side not run (no learn2learn virtualenv; build one with {SETUP_L2L})"


def extract_bundled(name: str, into: Path) -> Path:
    """Extract the bundled zip `name` ("omniglot-small1", "omniglot-small2"), the images metadist's shard set of
    that name was imported from; return its <alphabet>/<character> folder."""
    from metadist.data.bundled import BUNDLED_ZIPS, bundled_file

    with zipfile.ZipFile(bundled_file(BUNDLED_ZIPS[name])) as archive:
        archive.extractall(into)
    return into / Path(BUNDLED_ZIPS[name]).stem
