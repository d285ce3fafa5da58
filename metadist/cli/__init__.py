"""The `metadist` command line, one module per command group, each adding its subparsers and handlers."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from metadist.config import validation_message
from metadist.errors import MetadistError
from metadist.runtime import Terminated, configure_process
from metadist.version import __version__


def build_parser() -> argparse.ArgumentParser:
    from metadist.cli import data, serve, submit, train, tune

    parser = argparse.ArgumentParser(prog="metadist", description="Distributed meta-training on Ray.")
    parser.add_argument("--version", action="version", version=f"metadist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_commands(commands)
    train.add_commands(commands)
    serve.add_commands(commands)
    submit.add_commands(commands)
    tune.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_process()  # once, for every command and learner (metadist.runtime)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ValidationError as exc:  # a settings model built outside metadist.config.validate
        _error(f"{exc.title}: {validation_message(exc)}")
        return 2
    except MetadistError as exc:
        # Our errors already name the file, field or class at fault: print them, not a traceback.
        _error(str(exc))
        return 2
    except Terminated:  # what was running saved what it could and said so
        print("metadist: stopped by SIGTERM", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print("metadist: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> None:
    """The one line a failed command prints (a message quoting another library's text may hold line breaks)."""
    print(f"metadist: error: {' '.join(message.split())}", file=sys.stderr)
