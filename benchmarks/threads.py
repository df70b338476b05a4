"""The first run's heaviest phase (training the digits DiT) with 1 torch thread and with torch's
default (one per core), on an idle machine and beside CPU-bound work (one busy process per core, as
on a shared machine): wall and CPU seconds per training step, measured side by side in one run.

    python benchmarks/threads.py --steps 60
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402
from dualerase.config import load_config  # noqa: E402
from dualerase.models.digits import train_digits_dit  # noqa: E402


def spin() -> None:
    while True:
        pass


def timed(recipe, threads: int) -> tuple[float, float]:
    """(wall s, CPU s) per step of `recipe.steps` training steps at `threads` torch threads."""
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    train_digits_dit(recipe, progress=False)
    return (time.perf_counter() - wall) / recipe.steps, (time.process_time() - cpu) / recipe.steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args(argv)
    default = torch.get_num_threads()
    recipe = dataclasses.replace(load_config("digits").digits, steps=args.steps)
    print(header("torch threads on a shared CPU", {"steps": args.steps, "batch": recipe.batch_size,
                                                   "default threads": default,
                                                   "busy processes": os.cpu_count()}))
    timed(dataclasses.replace(recipe, steps=5), 1)  # warm-up: first-call allocations
    rows = []
    for load in ("idle", "busy"):
        busy = [multiprocessing.Process(target=spin, daemon=True)
                for _ in range(os.cpu_count() if load == "busy" else 0)]
        for b in busy:
            b.start()
        try:
            for threads in sorted({1, default}):
                wall, cpu = timed(recipe, threads)
                rows.append({"machine": load, "threads": threads, "wall s/step": wall,
                             "CPU s/step": cpu, "6,000 steps (min)": wall * 6000 / 60})
        finally:
            for b in busy:
                b.terminate()
    print(table(rows))
    for load in ("idle", "busy"):
        one, many = (next(r for r in rows if r["machine"] == load and r["threads"] == t)
                     for t in (1, default))
        print(f"{load}: {default} threads take {many['wall s/step'] / one['wall s/step']:.2f}x the "
              "wall time of 1")


if __name__ == "__main__":
    main()
