"""The commands, one thin file each: parse, check, call the library, print; bad input is one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from dualerase import __version__
from dualerase.errors import UsageError
from dualerase.launch import is_main_process

COMMANDS = {"erase-class": "erase_class", "sample-grid": "sample_grid", "fid-bench": "fid_bench",
            "fid-reference": "fid_reference"}
METHOD_NAMES = ("ga", "sa", "salun", "sfron")  # dualerase.unlearn.METHODS, named without importing torch


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError (one line, exit 2 from the command) instead of printing usage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__} (dualerase)")

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments; or, for --help, --version and a bad argument, the exit code once answered (the error in
    one line). A command imports torch only after this: help and usage errors take a fraction of a second."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except UsageError as e:
        return fail(parser.prog, e)


def fail(prog: str, error: Exception | str, code: int = 2) -> int:
    """Print a command's error as one line and return its exit code (2: bad input).

    Under a launcher every process fails alike: only the main one prints.
    """
    if is_main_process():
        print(f"{prog}: error: {error}", file=sys.stderr)
    return code


def resume_command(prog: str, argv: list[str]) -> str:
    """The command that continues an interrupted run: the same arguments, without --overwrite, with --resume latest."""
    kept, skip = [], False
    for arg in argv:
        if skip and not arg.startswith("-"):  # the value of a --resume being replaced
            skip = False
            continue
        skip = arg == "--resume"
        if arg not in ("--overwrite", "--resume"):
            kept.append(arg)
    return shlex.join([prog, *kept, "--resume", "latest"])


def main(argv: list[str] | None = None) -> int:
    """`python -m dualerase <command> [args]`: run one of the console scripts by name."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print(f"dualerase {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}; " if argv and argv[0] not in ("-h", "--help") else ""
        print(f"usage: python -m dualerase {{{','.join(COMMANDS)}}} [args]  ({given}each command's --help says more)",
              file=sys.stderr if given or not argv else sys.stdout)
        return 2 if given or not argv else 0
    return importlib.import_module(f"dualerase.cli.{COMMANDS[argv[0]]}").main(argv[1:])
