"""Several fid-bench jobs over one output folder: a claim file per cell, so that no cell runs twice and a dead job's
cell is run again; and fixed shares of the grid (--shard i/N)."""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from dualerase.errors import UsageError


def claim(cell: Path, stale_after: float) -> bool:
    """Whether this job runs the cell: it takes the cell's claim file (claims/<cell>), or one that a dead job left (on
    this host: its process is gone; on another: nothing in the claim or the cell folder changed for `stale_after`
    seconds). Several jobs over one output folder (a job array, several machines) thus never run a cell twice. Two
    jobs that find the same dead claim at the same instant may both take it; the cell's result is the same either
    way."""
    path = cell.parent.parent / "claims" / cell.name  # beside the cells: a cell folder holds a run and nothing else
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _abandoned(path, cell, stale_after):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path.with_name(f"{path.name}.abandoned-{os.getpid()}"))
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}")
        return True
    return False


def _abandoned(path: Path, cell: Path, stale_after: float) -> bool:
    try:
        host, pid = path.read_text().split()
    except (FileNotFoundError, ValueError):
        return False  # being written or just released: look again next time
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    newest = max([path.stat().st_mtime] + [p.stat().st_mtime for p in cell.rglob("*")])  # a running cell writes
    return time.time() - newest > stale_after


def shard_of(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: give i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard {text}: i must be in 0..N-1")
    return i, n
