"""Shared folders: the lock of a run's output folder, and fid-bench's claims of cells.

One run writes an output folder at a time. Several fid-bench jobs over one output folder take a
claim file per cell (no cell runs twice, a dead job's cell is run again) and fixed shares of the
grid (--shard i/N). A lock or claim left by a dead process is taken over, and so is one left empty
or unreadable (a crash between creating and writing it) for WRITE_GRACE seconds."""
from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from dualerase.errors import UsageError
from dualerase.launch import main_decides, processes

LOCK = ".dualerase.lock"  # in a run's output folder while a run writes it: "<host> <pid>"
# an empty or unreadable lock or claim older than this (by its mtime) was left by a crash between
# creating it and writing it, not by a holder still writing: it is taken over
WRITE_GRACE = 5.0


def claim(cell: Path, stale_after: float) -> bool:
    """Whether this job runs the cell: True when it takes the cell's claim file (claims/<cell>).

    It may take one that a dead job left (on this host: its process is gone; on another: nothing in
    the claim or the cell folder changed for `stale_after` seconds). Several jobs over one output
    folder (a job array, several machines) thus never run a cell twice. Two jobs that find the same
    dead claim at the same instant may both take it; the cell's result is the same either way."""
    path = _claim_path(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _take(path, lambda: _idle(path, cell) > stale_after)


def claimed(cell: Path) -> bool:
    """Whether some job has claimed the cell (a finished cell keeps its claim)."""
    return _claim_path(cell).exists()


def _claim_path(cell: Path) -> Path:
    # beside the cells: a cell folder holds a run and nothing else
    return cell.parent.parent / "claims" / cell.name


@contextlib.contextmanager
def locked(output: Path, stale_after: float = 6 * 3600):
    """Hold the lock of a run's output folder (`output/.dualerase.lock`) for the `with` block.

    A second run on the same folder is refused in one line (UsageError), naming the holder, instead
    of mixing its files into the first's. A lock left by a dead run is taken over (this host: its
    process is gone; another host: nothing in the folder changed for `stale_after` seconds).
    Folders made only to hold the lock are removed again if the run leaves them empty. Under a
    multi-process launch the main process holds it and every process gets its verdict."""
    made = [p for p in (output, *output.parents) if not p.exists()]
    refusal, path, main = None, output / LOCK, processes().is_main_process
    if main:
        if output.exists() and not output.is_dir():
            refusal = f"--output {output} is a file: give a folder"
        else:
            output.mkdir(parents=True, exist_ok=True)
            if not _take(path, lambda: _idle(path, output) > stale_after):
                refusal = (f"--output {output} is in use by another run ({_holder(path)}): wait "
                           "for it to end, or choose another --output (if that run is dead on "
                           f"another machine, delete {path})")
    refusal = main_decides(refusal)
    try:
        if refusal:
            raise UsageError(refusal)
        yield
    finally:
        if main and not refusal:
            path.unlink(missing_ok=True)
        # deepest first: remove what the lock alone made, if nothing went in
        for folder in made if main else ():
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _take(path: Path, stale: Callable[[], bool]) -> bool:
    """Create `path` holding "<host> <pid>" if it does not exist, or take it from a dead holder."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _abandoned(path, stale):
                return False
            path.unlink(missing_ok=True)  # then race for it again with O_EXCL, as for a new one
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}")
        return True
    return False


def _holder(path: Path) -> str:
    try:
        host, pid = path.read_text().split()
    except (FileNotFoundError, ValueError):
        return "a run that is starting or ending"
    since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
             if path.exists() else "?")
    return f"process {pid} on {host}, since {since}"


def _abandoned(path: Path, stale: Callable[[], bool]) -> bool:
    try:
        host, pid = path.read_text().split()
        pid = int(pid)
    except FileNotFoundError:
        return False  # just released: look again next time
    except ValueError:  # being written, or left half-written: empty or unreadable
        try:
            return time.time() - path.stat().st_mtime > WRITE_GRACE
        except FileNotFoundError:
            return False
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stale()


def _idle(path: Path, folder: Path) -> float:
    """Seconds since anything in `folder`, or the lock or claim file, changed (a job writes)."""
    newest = max([path.stat().st_mtime] + [p.stat().st_mtime for p in folder.rglob("*")])
    return time.time() - newest


def shard_of(text: str) -> tuple[int, int]:
    """(i, N) of a --shard "i/N"; anything else, or i outside 0..N-1, raises UsageError."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: give i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard {text}: i must be in 0..N-1")
    return i, n
