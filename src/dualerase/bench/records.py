"""A benchmark's records: one line per cell in `cells.jsonl`, the per-step logs in `logs.tar.xz`.

A line holds the cell's folder (relative to the benchmark's output), its preset and method (for
the reader), the config's difference from the schema's defaults (every value the preset, the
method's published values and the overrides set: a later edit of the preset does not change what
a record says it ran with) and the cell's `metrics.json` or its divergence. `unpack` writes the
cell folders back (config.yaml, metrics.json or diverged.txt, log.jsonl) so that `fid-bench
--aggregate` redraws every table and figure from them; `pack` writes the records of an output
folder's cells.
"""
from __future__ import annotations

import io
import json
import lzma
import tarfile
from pathlib import Path

import yaml

from dualerase.config import Config, apply_mapping, differing, saved_config, to_dict
from dualerase.errors import ConfigError, UsageError
from dualerase.storage import atomic_write_json, atomic_write_text

CELLS = "cells.jsonl"
LOGS = "logs.tar.xz"
# a cell folder holding one of these is a record; the texts, by their key in cells.jsonl
TEXTS = {"diverged": "diverged.txt", "failed": "failed.txt"}
RESULTS = ("metrics.json", *TEXTS.values())


def _nested(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return out


def record_folders(output: Path) -> list[Path]:
    """Every run folder under `output` with a result (metrics.json, diverged.txt or failed.txt),
    sorted."""
    found = {p.parent for name in RESULTS for p in output.rglob(name)}
    return sorted(f for f in found if (f / "config.yaml").is_file())


def pack(output: Path, records: Path, preset: str) -> int:
    """Write records/cells.jsonl and records/logs.tar.xz from the run folders under `output`.

    Args:
        output: a benchmark's output folder (or any folder of erase-class runs).
        records: the folder to write; its earlier records are replaced.
        preset: the preset the cells ran under (recorded for the reader).

    Returns:
        The number of cells written.

    Raises:
        UsageError: a cell's config.yaml holds a key this version no longer has.
    """
    lines, logs = [], []
    for folder in record_folders(output):
        config = saved_config(folder / "config.yaml")
        if config is None:
            raise UsageError(f"{folder / 'config.yaml'} holds a key this version no longer has: "
                             "pack the records at the commit that ran them")
        base = to_dict(Config())
        line = {"folder": folder.relative_to(output).as_posix(), "preset": preset,
                "method": config["method"]["name"],
                "config": {key: new for key, _, new in differing(base, config)}}
        if (folder / "metrics.json").exists():
            line["metrics"] = json.loads((folder / "metrics.json").read_text())
        else:
            key = next(k for k, name in TEXTS.items() if (folder / name).exists())
            text = (folder / TEXTS[key]).read_text()
            # a failure's reason alone: its traceback names this machine's paths
            line[key] = text.splitlines()[0] if key == "failed" else text
        lines.append(json.dumps(line, sort_keys=False))
        if (folder / "log.jsonl").exists():
            logs.append((f"{line['folder']}/log.jsonl", (folder / "log.jsonl").read_bytes()))
    records.mkdir(parents=True, exist_ok=True)
    atomic_write_text(records / CELLS, "".join(line + "\n" for line in lines))
    (records / LOGS).unlink(missing_ok=True)
    if not logs:  # a sweep's cells keep no per-step log
        return len(lines)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in logs:  # fixed metadata: the same logs give the same archive
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    (records / LOGS).write_bytes(lzma.compress(buf.getvalue(), preset=9))
    return len(lines)


def unpack(records: Path, output: Path) -> int:
    """Write the cell folders of `records` into `output`; folders already holding a result are kept.

    Returns:
        The number of cell folders written.

    Raises:
        UsageError: records that are missing, damaged, or whose config no longer loads.
    """
    cells = records / CELLS
    if not cells.is_file():
        raise UsageError(f"--records {records} holds no {CELLS}: give a folder of benchmark "
                         "records")
    logs = {}
    if (records / LOGS).is_file():
        with tarfile.open(records / LOGS, mode="r:xz") as tar:
            logs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    written = 0
    for number, text in enumerate(cells.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
            folder = output / line["folder"]
            diff = _nested(line["config"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{cells} line {number} is not a cell record: restore the file from "
                             "git") from None
        if ".." in Path(line["folder"]).parts or any((folder / n).exists() for n in RESULTS):
            continue
        try:
            cfg = Config()
            apply_mapping(cfg, diff)
        except ConfigError as e:
            raise UsageError(f"{cells} line {number}: {e}; read these records at the commit that "
                             "wrote them") from None
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if "metrics" in line:
            atomic_write_json(folder / "metrics.json", line["metrics"])
        for key, name in TEXTS.items():
            if key in line:
                atomic_write_text(folder / name, line[key])
        log = logs.get(f"{line['folder']}/log.jsonl")
        if log is not None:
            (folder / "log.jsonl").write_bytes(log)
        written += 1
    return written
