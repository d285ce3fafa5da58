"""Regenerate the Python modules of fewshot.proto with grpcio-tools (a development-time dependency only).

    python -m metadist.serving.codegen              # rewrite metadist/serving/fewshot_pb2{,_grpc}.py{,i}
    python -m metadist.serving.codegen --out DIR    # write them under DIR/metadist/serving/ instead

The generated modules are committed, so users need no grpcio-tools. Generation is pinned to GRPCIO_TOOLS_VERSION:
its protoc decides the bytes written (and the oldest grpcio and protobuf the modules accept at run time), so
tests/test_serving.py regenerates them into a temporary folder and checks they equal the committed ones.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata, resources
from pathlib import Path

from metadist.errors import ConfigError

# The generator's version; pyproject.toml's `test` extra pins the same one. The modules it writes require
# grpcio >= this version and protobuf 7.x at run time (pyproject.toml's dependencies).
GRPCIO_TOOLS_VERSION = "1.85.1"
PROTO = "metadist/serving/fewshot.proto"  # relative to the include root: it fixes the generated import paths
GENERATED = ("fewshot_pb2.py", "fewshot_pb2.pyi", "fewshot_pb2_grpc.py")
PACKAGE_DIR = Path(__file__).resolve().parent
INCLUDE_ROOT = PACKAGE_DIR.parent.parent  # the folder holding metadist/


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under out_root/metadist/serving/; returns their paths."""
    try:
        installed = metadata.version("grpcio-tools")
        from grpc_tools import protoc
    except (metadata.PackageNotFoundError, ImportError) as exc:
        raise ConfigError(f"regenerating {PROTO} needs grpcio-tools=={GRPCIO_TOOLS_VERSION} (pip install 'metadist[test]')") from exc
    if installed != GRPCIO_TOOLS_VERSION:
        raise ConfigError(
            f"grpcio-tools {installed} is installed, but {PROTO}'s committed modules are generated with "
            f"{GRPCIO_TOOLS_VERSION} (metadist.serving.codegen.GRPCIO_TOOLS_VERSION): install that version, or change "
            "the pin here, in pyproject.toml (test extra) and the run-time grpcio/protobuf bounds together"
        )
    out_dir = out_root / "metadist" / "serving"
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")  # google/protobuf/*.proto, if ever imported
    args = [
        "grpc_tools.protoc", f"-I{INCLUDE_ROOT}", f"-I{well_known}",
        f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", PROTO,
    ]
    if protoc.main(args) != 0:
        raise ConfigError(f"protoc failed on {INCLUDE_ROOT / PROTO} (its messages are above)")
    return [out_dir / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metadist.serving.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=INCLUDE_ROOT, help="root to write metadist/serving/ under (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        for path in generate(args.out):
            print(path)
    except ConfigError as exc:
        print(f"codegen: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
