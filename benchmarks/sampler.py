"""Our sampler against diffusers' DiTPipeline on CPU: a small 1000-class latent DiT (learned sigma)
and a tiny VAE with random seeded weights, the same scheduler, steps, guidance, batch and initial
noise; images/s of each, their ratio and the largest difference between their images."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers  # noqa: E402

from benchmarks.gpu_check import VAE_TINY, build_vae  # noqa: E402
from benchmarks.versus_ditpipeline import SCHEDULERS, compare, dit_scheduler, summary, table  # noqa: E402
from dualerase.models.dit import build_dit  # noqa: E402


def parse_args(argv=None):
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--batch", type=int, default=8,
                   help="images per batch, one batch per run (default 8)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance", type=float, default=4.0,
                   help="classifier-free guidance scale, >= 1 (default 4)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs of each sampler, interleaved (default 5)")
    p.add_argument("--size", type=int, default=8,
                   help="latent side of the DiT (default 8: 16 px images)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim",
                   help="default ddim (eta 0)")
    p.add_argument("--layers", type=int, default=4,
                   help="DiT blocks (default 4; 4 heads x 32 dims)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and noise")
    args = p.parse_args(argv)
    if args.guidance < 1:
        p.error("--guidance must be >= 1: DiTPipeline does not guide below 1, our sampler does")
    return args


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` knows."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def main(argv=None) -> int:
    """Build the models, run the comparison and print the header and table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = dict(num_classes=1000, sample_size=args.size, in_channels=4, patch_size=2,
               layers=args.layers, heads=4, head_dim=32)
    model = build_dit(**cfg)
    vae = build_vae(VAE_TINY)
    result = compare(model, vae, dit_scheduler(args.scheduler), batch=args.batch, steps=args.steps,
                     guidance=args.guidance, repeats=args.repeats, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    print("## Our sampler vs diffusers' DiTPipeline (CPU)")
    print()
    print(f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} "
          f"{platform.machine()}; torch threads {torch.get_num_threads()}")
    print(f"- torch {torch.__version__}, diffusers {diffusers.__version__}, python "
          f"{platform.python_version()}")
    print(f"- model: DiT {cfg} (learned sigma), {params:,} params; VAE {VAE_TINY}; random weights, "
          f"seed {args.seed}; fp32")
    print(f"- settings: batch {args.batch}, {args.steps} steps, guidance {args.guidance} on all 4 "
          f"latent channels, {SCHEDULERS[args.scheduler]}; one untimed run each, then "
          f"{args.repeats} timed runs each, alternating which goes first; a run is noise + "
          "denoising + VAE decode + float images on the host")
    print(f"- {summary(result)}")
    print()
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
