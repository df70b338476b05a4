"""Storage: atomic writes and folder swaps, the cache root, content fingerprints, the presets.

A reader never sees a half-written file; every cache is keyed by content fingerprints; the
package's own files are its presets. At the bottom of the package: every layer writes."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import zipfile
from importlib import resources
from pathlib import Path

import yaml

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


FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 1 << 20  # bytes: a disk with less free space counts as full


def nearly_full(path) -> bool:
    """Whether the disk of `path` (or of its nearest existing parent) has almost no space left."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < NEARLY_FULL
    except OSError:
        return False


def full_disk(error: BaseException, *paths) -> tuple[int, str] | None:
    """(ENOSPC or EDQUOT, a file on the full disk) when `error` comes from a full disk, else None.

    That is an OSError ENOSPC/EDQUOT, or any other error (torch.save and safetensors raise their
    own when a write comes up short) while the disk of a file it names, of one of `paths` or of
    the cache has almost no space left. The file named is one on that disk, else the one written
    (a copy's target, not its source)."""
    return _full_disk(error, *paths, cache_root())


def _full_disk(error: BaseException, *paths) -> tuple[int, str] | None:
    """`full_disk` with the disks of the error's files and of `paths` only."""
    if not isinstance(error, Exception):
        return None
    named = [getattr(error, "filename2", None), getattr(error, "filename", None)]
    named = [str(p) for p in named if isinstance(p, (str, os.PathLike))]
    on_full = [str(p) for p in [*named, *paths] if p is not None and nearly_full(p)]
    code = error.errno if isinstance(error, OSError) and error.errno in FULL else None
    if code is None and not on_full:
        return None
    return code or errno.ENOSPC, (on_full or named or ["a file"])[0]


@contextlib.contextmanager
def writing(path: Path, tmp: Path):
    """Around writing `path` through the temporary file or folder `tmp`.

    A failed block removes `tmp`; a failure on a full disk (`full_disk`, the disk of `tmp`) is
    raised as an OSError ENOSPC/EDQUOT naming `path`."""
    try:
        yield
    except BaseException as err:
        full = _full_disk(err, tmp)  # before `tmp` is removed, which frees its space
        remove(tmp)
        if full is None:
            raise
        raise OSError(full[0], os.strerror(full[0]), str(path)) from err


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary name next to `path` to write to, renamed onto `path` when the block succeeds.

    The name is unique per process and keeps the suffix, for writers that read it; a reader never
    sees a half-written file, and a failed block leaves no temporary file (`writing`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    with writing(path, tmp):
        yield tmp
        os.replace(tmp, path)


def remove(path: Path) -> None:
    """Remove the file or folder `path`, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files and folders (`.<name>.tmp`) failed writes left in `folder`."""
    for tmp in folder.glob(".*.tmp"):
        remove(tmp)


def damage(*paths: Path) -> str | None:
    """"<file> is damaged (why)" for the first of `paths` that cannot be read (`why_damaged`); None
    when each looks whole."""
    for path in paths:
        if why := why_damaged(path):
            return f"{path} is damaged ({why})"
    return None


def why_damaged(path: Path) -> str | None:
    """Why the file at `path` cannot be read, from a cheap look; None when it looks whole.

    Missing, empty, or cut short or garbage for its kind: safetensors (its header and size), .pt
    (torch.save's zip directory), .json and .yaml (a mapping)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n)) if 8 + n <= size else None
            end = 8 + n + max((v["data_offsets"][1] for k, v in (header or {}).items()
                               if k != "__metadata__"), default=0)
            if header is None or end != size:
                return f"{size} bytes, not the {end} its header gives: cut short or garbage"
        elif path.suffix == ".pt":
            zipfile.ZipFile(path).close()
        elif path.suffix in (".json", ".yaml"):
            text = path.read_text()
            if not isinstance(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text),
                              dict):
                return "not a mapping of keys"
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, LookupError, TypeError, AttributeError, zipfile.BadZipFile,
            yaml.YAMLError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    return None


def whole_lines(path: Path) -> list[str]:
    """The lines of the JSON-lines file `path` that are whole JSON records, up to the first that is
    not (a line cut short by a kill or a full disk, or garbage); [] without the file."""
    whole = []
    # the last piece is "" after the final newline, or a line cut short
    for line in (path.read_text().split("\n") if path.exists() else [""])[:-1]:
        try:
            json.loads(line)
        except ValueError:
            break
        whole.append(line)
    return whole


def drop_damaged(paths) -> None:
    """Delete each of the cached files `paths` that is damaged (`damage`), saying so on stderr: the
    code that reads it makes it again."""
    for path in paths:
        if path.exists() and (bad := damage(path)):
            print(f"warning: {bad}: making it again", file=sys.stderr)
            path.unlink()


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
