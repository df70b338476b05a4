"""The commands, one thin file each: parse, check, call the library, print; bad input is one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from dualerase import __version__
from dualerase.errors import UsageError

COMMANDS = {"erase-class": "erase_class", "sample-grid": "sample_grid", "fid-bench": "fid_bench",
            "fid-reference": "fid_reference"}


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError (one line, exit 2 from the command) instead of printing usage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__} (dualerase)")

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


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
