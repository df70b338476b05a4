"""What every benchmark prints above its table: the machine, threads, library versions and its
settings; and timing."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

DIGITS = dict(num_classes=10, sample_size=8, in_channels=1, patch_size=2, layers=4, heads=4,
              head_dim=16)
SMALL_LATENT = dict(num_classes=10, sample_size=16, in_channels=4, patch_size=2, layers=4, heads=4,
                    head_dim=32)


def cpu_name() -> str:
    """The CPU model and its logical core count, from /proc/cpuinfo where there is one."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    return f"{names[0] if names else platform.processor() or 'CPU'} x {os.cpu_count()}"


def header(title: str, settings: dict) -> str:
    """Lines naming the benchmark, the machine, torch's thread count, library versions and the
    settings."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    libs = ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "accelerate"))
    lines = [f"# {title}",
             f"machine: {platform.platform()}, {device}, {torch.get_num_threads()} torch threads",
             f"versions: python {platform.python_version()}, {libs}",
             "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (columns from the first row)."""
    cols = list(rows[0])
    fmt = [lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)] * len(cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r[c]) for f, c in zip(fmt, cols)) + " |" for r in rows]
    return "\n".join(lines)


def interleaved(candidates: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each candidate, run in turn `repeats` times (A, B, A, B, ...) so that
    drift in the machine's speed hits all of them alike."""
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
