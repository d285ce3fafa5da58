"""The `metadist` command. One module per command group; each adds its subparsers and handlers."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from metadist import __version__
from metadist.errors import MetadistError


def build_parser() -> argparse.ArgumentParser:
    from metadist.cli import data, serve, submit, train

    parser = argparse.ArgumentParser(prog="metadist", description="Distributed meta-training on Ray.")
    parser.add_argument("--version", action="version", version=f"metadist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_commands(commands)
    train.add_commands(commands)
    serve.add_commands(commands)
    submit.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ValidationError as exc:
        where = "; ".join(f"{exc.title}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"metadist: error: {where}", file=sys.stderr)
        return 2
    except MetadistError as exc:
        # Our errors already name the file, field or class at fault: print them, not a traceback.
        print(f"metadist: error: {exc}", file=sys.stderr)
        return 2
