"""The commands, one thin file each: parse, check, call the library, print.

Bad input is one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from dualerase import __version__
from dualerase.errors import UsageError
from dualerase.launch import is_main_process

# Idle OpenMP threads spin before they sleep; beside other work the spinning steals the cores the
# work needs (2 threads ran 3-15x slower than 1 there). A short spin keeps torch's thread count
# near its idle speed and within 1.3x of the best setting under load (docs/performance.md,
# "Threads"); it changes no number. libgomp reads it when torch loads, so it is set before any
# command imports torch; a value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

COMMANDS = {"erase-class": "erase_class", "sample-grid": "sample_grid", "fid-bench": "fid_bench",
            "fid-reference": "fid_reference"}
# dualerase.unlearn.METHODS, named without importing torch
METHOD_NAMES = ("ga", "sa", "salun", "sfron")


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError instead of printing usage.

    The command then prints the error in one line and exits with 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version",
                          version=f"%(prog)s {__version__} (dualerase)")

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code once --help, --version or a bad argument is answered.

    A bad argument's error is printed in one line. A command imports torch only after this: help and
    usage errors take a fraction of a second."""
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


def stopped(prog: str, err: BaseException, output, argv: list[str] | None) -> int:
    """A run that stopped: diverged, a full disk (whatever error its writer raised), or Ctrl-C, as
    one line saying how to continue.

    Any other error is raised again. Returns the exit code: 130 after Ctrl-C, else 1."""
    # torch: only once a run has stopped
    from dualerase.runs.checkpoint import disk_full
    from dualerase.unlearn import DivergenceError

    if isinstance(err, KeyboardInterrupt):
        again = resume_command(prog, sys.argv[1:] if argv is None else argv)
        if is_main_process():
            print(f"{prog}: interrupted: continue with `{again}`", file=sys.stderr)
        return 130
    message = str(err) if isinstance(err, DivergenceError) else disk_full(err, output)
    if message is None:  # not a full disk
        raise err
    return fail(prog, message, 1)


def resume_command(prog: str, argv: list[str]) -> str:
    """The same command with --resume latest and no --overwrite: it continues an interrupted run."""
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
        print(f"usage: python -m dualerase {{{','.join(COMMANDS)}}} [args]  "
              f"({given}each command's --help says more)",
              file=sys.stderr if given or not argv else sys.stdout)
        return 2 if given or not argv else 0
    return importlib.import_module(f"dualerase.cli.{COMMANDS[argv[0]]}").main(argv[1:])
