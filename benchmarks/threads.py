"""The three CPU phases of a digits run (a training step of the digits DiT, an outer step of
erasure, a sampling step) at each thread setting, on an idle machine and beside other work: spinning
processes, or other torch jobs (each training the digits DiT at torch's default threads). Wall
seconds per step, measured side by side in one run; each measurement is a fresh process, so that
wait-policy variables reach the OpenMP runtime before torch loads it.

    python benchmarks/threads.py --steps 30

Each cell also records a digest of the weights (training, erasure) or samples (sampling) it made:
the same setting gives the same digest under every load when its numbers do not follow the load.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (torch threads, extra environment); 2 threads is torch's default on this 2-core machine
SETTINGS = {
    "1 thread": (1, {}),
    "2 threads": (2, {}),
    "2, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2, GOMP_SPINCOUNT=2000": (2, {"GOMP_SPINCOUNT": "2000"}),
}
DEFAULT = list(SETTINGS)
# shorter spins, measured with --settings
SETTINGS.update({f"2, GOMP_SPINCOUNT={n}": (2, {"GOMP_SPINCOUNT": str(n)})
                 for n in (200, 500, 1000)})
LOADS = {"idle": ("none", 0), "2 spinners": ("spin", 2), "2 torch jobs": ("torch", 2),
         "4 torch jobs": ("torch", 4)}
PHASES = ("train", "erase", "sample")

MEASURE = r"""
import hashlib, json, sys, time, torch
from dualerase.config import load_config
from dualerase.models.dit import build_dit, make_scheduler
from dualerase.models.digits import NUM_CLASSES, SIZE, load_digits
from dualerase.models.loss import DiTLoss
from dualerase.sampling import sample

phase, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = load_config("digits")
r = cfg.digits
model = build_dit(num_classes=NUM_CLASSES, sample_size=SIZE, in_channels=1, patch_size=r.patch_size,
                  layers=r.layers, heads=r.heads, head_dim=r.head_dim)
x, y = load_digits()
loss_fn = DiTLoss(make_scheduler())
gen = torch.Generator().manual_seed(0)


def work(n):
    if phase == "sample":
        labels = torch.arange(cfg.sample.batch_size) % NUM_CLASSES
        with torch.no_grad():
            return sample(model, make_scheduler(), labels, num_steps=n, guidance=1.0, seed=0,
                          batch_size=cfg.sample.batch_size, progress=False)
    batch = r.batch_size if phase == "train" else cfg.erase.batch_size
    forget_opt = torch.optim.AdamW(model.parameters(), lr=cfg.erase.forget_lr, weight_decay=0.0)
    retain_opt = torch.optim.AdamW(model.parameters(), lr=cfg.erase.retain_lr, weight_decay=0.0)
    for _ in range(n):  # erase: a forget step (ascent) and a retain step, as one outer step
        for sign, opt in ((1.0, retain_opt),) if phase == "train" else ((-1.0, forget_opt),
                                                                        (1.0, retain_opt)):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            opt.zero_grad(set_to_none=True)
            (sign * loss_fn(model, (x[idx], y[idx]))).backward()
            opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


work(2)  # warm-up: first-call allocations
start = time.perf_counter()
out = work(steps)
wall = (time.perf_counter() - start) / steps
digest = hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest()[:12]
print(json.dumps({"wall": wall, "digest": digest}))
"""

NEIGHBOUR = r"""
import torch
from dualerase.config import load_config
from dualerase.models.digits import train_digits_dit
import dataclasses
recipe = dataclasses.replace(load_config("digits").digits, steps=10 ** 9)
train_digits_dit(recipe, progress=False)
"""


def spin() -> None:
    while True:
        pass


def neighbours(kind: str, count: int) -> list:
    """Start `count` background processes: spinners, or torch jobs at default threads."""
    if kind == "spin":
        procs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(count)]
        for p in procs:
            p.start()
        return procs
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    return [subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count if kind == "torch" else 0)]


def measure(phase: str, steps: int, setting: str) -> dict:
    threads, extra = SETTINGS[setting]
    env = {**os.environ, **extra}
    out = subprocess.run([sys.executable, "-c", MEASURE, phase, str(steps), str(threads)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="steps measured per cell (default 30)")
    p.add_argument("--sample-steps", type=int, default=10,
                   help="sampling steps per cell, each over a batch of 500 (default 10)")
    p.add_argument("--loads", nargs="+", choices=list(LOADS), default=list(LOADS))
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEFAULT,
                   metavar="SETTING", help=f"settings measured, of: {'; '.join(SETTINGS)} "
                   f"(default: {'; '.join(DEFAULT)})")
    args = p.parse_args(argv)
    from benchmarks.common import header, table

    print(header("torch threads on a shared CPU: train, erase and sample steps",
                 {"steps": args.steps, "sample steps": args.sample_steps,
                  "cores": os.cpu_count(), "settings": "; ".join(args.settings)}), flush=True)
    rows = []
    for load in args.loads:
        procs = neighbours(*LOADS[load])
        try:
            for phase in args.phases:
                n = args.sample_steps if phase == "sample" else args.steps
                for setting in args.settings:
                    got = measure(phase, n, setting)
                    rows.append({"load": load, "phase": phase, "setting": setting,
                                 "wall s/step": got["wall"], "digest": got["digest"]})
                    print(f"  {load} / {phase} / {setting}: {got['wall']:.4f} s", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join() if hasattr(proc, "join") else proc.wait()
    for row in rows:  # against the best setting of the same load and phase
        best = min(r["wall s/step"] for r in rows
                   if r["load"] == row["load"] and r["phase"] == row["phase"])
        row["x best"] = row["wall s/step"] / best
    print(table(rows))
    print("\nworst ratio to the best setting over every load and phase:")
    for setting in args.settings:
        mine = [r for r in rows if r["setting"] == setting]
        worst = max(mine, key=lambda r: r["x best"])
        same = all(len({r["digest"] for r in mine if r["phase"] == ph}) <= 1 for ph in PHASES)
        print(f"  {setting}: {worst['x best']:.2f}x ({worst['load']}, {worst['phase']}); "
              f"digests {'the same' if same else 'DIFFER'} across loads")


if __name__ == "__main__":
    main()
