"""What a Table 2 run costs: network passes per phase (dualerase.runs.plan.passes, as `--dry-run`
prints them) for every cell of a fid-bench spec, counted once where the cache shares work (the
base model's evaluation and grid per class and seed, the method's preparation per method, class
and seed), turned into FLOP (FlopCounterMode on DiT-XL/2 and the VAE decoder, on the meta device)
and GPU-hours at a stated share of the device's bf16 peak (MFU)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402
from benchmarks.gpu_check import VAE_XL, XL, build_vae  # noqa: E402
from dualerase.bench.spec import read_spec  # noqa: E402
from dualerase.config import load_config  # noqa: E402
from dualerase.models.dit import build_dit  # noqa: E402
from dualerase.runs.evaluation import evaluation_config  # noqa: E402
from dualerase.runs.plan import passes  # noqa: E402


def gflop_per_image() -> tuple[float, float]:
    """(DiT-XL/2 forward, VAE decode) GFLOP for one 256 px image, counted on the meta device.

    No weights are allocated and no time is spent."""
    with torch.device("meta"):
        dit, vae, z = build_dit(**XL), build_vae(VAE_XL), torch.empty(1, 4, 32, 32)
        with FlopCounterMode(display=False) as dit_count:
            dit(z, torch.zeros(1, dtype=torch.long), class_labels=torch.zeros(1, dtype=torch.long))
        with FlopCounterMode(display=False) as vae_count:
            vae.decode(z)
    return dit_count.get_total_flops() / 1e9, vae_count.get_total_flops() / 1e9


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("spec", nargs="?", default="imagenet",
                   help="fid-bench spec (default: imagenet, the paper's Table 2)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak (default: H100/H200 SXM)")
    p.add_argument("--mfu-batched", type=float, default=0.40,
                   help="assumed MFU of batched work: guided sampling, SA's timestep-batched "
                        "Fisher, SalUn's saliency")
    p.add_argument("--mfu-small", type=float, default=0.05,
                   help="assumed MFU of batch-1 erase steps and per-sample Fisher gradients (a GPU "
                        "mostly idles)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every cell, e.g. eval.protocol=fast")
    args = p.parse_args(argv)
    spec = read_spec(args.spec)
    spec.set = [*spec.set, *args.overrides]
    dit_gflop, vae_gflop = gflop_per_image()
    # phase -> [forward passes, backward passes, images decoded]
    totals: dict[str, list[float]] = {}
    shared = set()
    for method in spec.methods:
        for mode in spec.optimizers:
            for cls in spec.classes:
                for seed in spec.seeds:
                    cfg = load_config(spec.config, [*spec.set, f"method.name={method}",
                                                       f"erase.optimizer={mode}", f"seed={seed}"])
                    guided = 1 if cfg.sample.guidance == 1.0 else 2
                    # passes per image evaluated
                    eval_steps = evaluation_config(cfg).sample.steps * guided
                    for phase, fwd, bwd in passes(cfg, 1000, cfg.eval.grid_classes):
                        name = phase.replace(" (cached after a first run)", "")
                        name = "erasure" if name.startswith("erasure") else name
                        once = ((method, cls, seed) if name.startswith("method preparation") else
                                (cls, seed) if name.endswith("before") else None)
                        if once is not None and (name, once) in shared:
                            continue  # cached: the first cell that needs it pays
                        shared.add((name, once))
                        images = fwd / eval_steps if name.startswith(("evaluation", "grid")) else 0
                        row = totals.setdefault(name, [0.0, 0.0, 0.0])
                        row[0], row[1], row[2] = row[0] + fwd, row[1] + bwd, row[2] + images
    rows, hours = [], {}
    for name, (fwd, bwd, images) in totals.items():
        pflop = ((fwd + 2 * bwd) * dit_gflop + images * vae_gflop) / 1e6  # backward ~ 2x forward
        mfu = (args.mfu_small if name in ("erasure", "method preparation (Fisher diagonals)")
               else args.mfu_batched)
        hours[name] = pflop * 1e15 / (args.peak_tflops * 1e12 * mfu) / 3600
        rows.append({"phase": name, "forward passes": f"{fwd:,.0f}",
                     "backward passes": f"{bwd:,.0f}", "images decoded": f"{images:,.0f}",
                     "PFLOP": pflop, "assumed MFU": mfu, "GPU-hours": hours[name]})
    total = sum(hours.values())
    for r in rows:
        r["share"] = f"{hours[r['phase']] / total:.1%}"
    cells = len(spec.methods) * len(spec.optimizers) * len(spec.classes) * len(spec.seeds)
    print(header(f"cost model of fid-bench {args.spec}: {cells} cells", {
        **{k: v for k, v in vars(args).items() if k != "spec"},
        "DiT GFLOP/forward": round(dit_gflop, 1),
        "VAE decode GFLOP/image": round(vae_gflop, 1)}))
    print(table(rows))
    print(f"\ntotal: {total:,.1f} GPU-hours ({total / cells:.2f} per cell) at the assumed MFUs")


if __name__ == "__main__":
    main()
