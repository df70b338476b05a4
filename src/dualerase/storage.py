"""Storage: atomic writes and folder swaps, the cache root, content fingerprints, the presets.

A reader never sees a half-written file; every cache is keyed by content fingerprints; the
package's own files are its presets. At the bottom of the package: every layer writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path

# package data: presets *.yaml, benchmark specs bench/*.yaml
PRESETS = resources.files("dualerase") / "presets"


def preset_names(folder: str = "") -> list[str]:
    """Names of the shipped presets, or of the shipped benchmark specs with folder="bench"."""
    return sorted(p.name.removesuffix(".yaml") for p in (PRESETS / folder).iterdir()
                  if p.name.endswith(".yaml"))


def replace_folder(tmp: Path, folder: Path) -> None:
    """Swap the finished temporary folder `tmp` in for `folder`.

    The old one is renamed aside before the new one is renamed in, so `folder` is always either the
    old or the new complete version (or briefly absent), never half-written."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary name next to `path` to write to, renamed onto `path` when the block succeeds.

    The name is unique per process and keeps the suffix, for writers that read it; a reader never
    sees a half-written file, and a failed block leaves no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj) -> None:
    """Write `obj` as indented JSON, atomically and strictly.

    A NaN or infinity raises ValueError instead of writing `NaN`/`Infinity` (readers refuse it)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def cache_root() -> Path:
    """Where prepared models live: $DUALERASE_HOME, else ~/.cache/dualerase."""
    return Path(os.environ.get("DUALERASE_HOME", Path.home() / ".cache" / "dualerase"))


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (a recipe, a protocol)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


_DIGESTS: dict[tuple, str] = {}


def file_digest(path) -> str:
    """The sha256 of a file's content, hashed once per process per version of the file.

    The memo is keyed by path, size, times and inode, and rewriting a file changes its ctime even
    when its size is the same and its mtime is put back. Caches keyed by it follow what a file
    holds, not where it is (a weights file rebuilt in place gets new entries)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                sha.update(chunk)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


def file_stamp(path: Path) -> tuple:
    """(path, size, mtime, ctime) of a file: a cheap identity for the many images of a folder.

    A file rewritten in place changes its ctime, even with its size and mtime kept."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns


def link(source: Path, target: Path) -> None:
    """Make `target` a hard link to `source` (no second copy on disk), or a copy across devices."""
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
