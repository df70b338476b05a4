"""The digits DiT and classifier shipped inside the package (`src/dualerase/weights/`): their
manifest, and their install into the cache, checked file by file against its digests."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path

from dualerase.errors import ModelError

WEIGHTS = resources.files("dualerase") / "weights"  # the shipped digits DiT and classifier
MANIFEST = "manifest.json"


def shipped_manifest() -> dict:
    """The manifest of the shipped weights: their recipes, files and digests, and their quality."""
    return json.loads((WEIGHTS / MANIFEST).read_text())


def shipped_entry(kind: str, target: Path) -> dict | None:
    """The manifest's entry of the shipped `kind` ("dit" or "classifier") if `target` names it."""
    if not (WEIGHTS / MANIFEST).is_file():  # a source tree before its first release
        return None
    entry = shipped_manifest()[kind]
    return entry if entry["name"] == target.name else None


def ships(kind: str, target: Path) -> bool:
    """Whether the package ships the `kind` ("dit" or "classifier") that `target` names."""
    return shipped_entry(kind, target) is not None


def install_shipped(kind: str, target: Path) -> bool:
    """Copy the shipped `kind` ("dit" folder or "classifier" file) into the cache at `target`.

    Only where the shipped one is the one `target` names (the same recipe fingerprint); each file
    is checked against the manifest's sha256 on the way. Returns whether it was installed.

    Raises:
        ModelError: a shipped file does not match its digest (a damaged install).
    """
    entry = shipped_entry(kind, target)
    if entry is None:
        return False
    tmp = target.with_name(f".{target.name}.shipped")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, digest in entry["files"].items():
        data = (WEIGHTS / kind / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"the shipped digits {kind} file {name} does not match its digest in "
                             f"{MANIFEST} (a damaged install): reinstall dualerase, or train one "
                             "with --set digits.shipped=false")
        (tmp / name).write_bytes(data)
    if kind == "classifier":
        os.replace(tmp / target.name, target)
        tmp.rmdir()
    else:
        os.replace(tmp, target)
    return True
