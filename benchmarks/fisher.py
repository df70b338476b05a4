"""SFR-on's Fisher diagonal on CPU: the published batch-1 loop against per-sample gradients vmapped
in chunks (fisher_diagonal's `chunk`), on two small DiTs with random weights. Both ways run in one
process, alternating, and the table gives each one's median time and how far apart their values are.

    OMP_NUM_THREADS=1 python benchmarks/fisher.py --threads 1 --samples 256 --chunk 16
"""
import argparse
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dualerase.models.dit import build_dit, make_scheduler  # noqa: E402
from dualerase.models.loss import DiTLoss  # noqa: E402
from dualerase.unlearn.saliency import fisher_diagonal  # noqa: E402

# (name, build_dit arguments): the digits model; small latent DiTs (4-channel latents, patch 2,
# learned sigma as DiT-XL/2) on 8x8 and 16x16 latents (16 and 64 tokens; DiT-XL/2 at 256 px: 32x32,
# 256 tokens)
LATENT = dict(num_classes=10, in_channels=4, patch_size=2, layers=4, heads=4, head_dim=32)
MODELS = [
    ("digits 8x8x1", dict(num_classes=10, sample_size=8, in_channels=1, patch_size=2, layers=4,
                          heads=4, head_dim=16)),
    ("latent 8x8x4", dict(LATENT, sample_size=8)),
    ("latent 16x16x4", dict(LATENT, sample_size=16)),
]


def setup(kwargs, samples):
    """(model, loss, single-sample batches (x0, label, noise seed) as SFR-on's Fisher reads them):
    random, seeded."""
    torch.manual_seed(0)
    model = build_dit(**kwargs)
    c, s = kwargs["in_channels"], kwargs["sample_size"]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(samples, c, s, s, generator=gen) * 2 - 1
    y = torch.randint(0, kwargs["num_classes"], (samples,), generator=gen)
    seeds = torch.randint(0, 2**62, (samples,), generator=gen)
    return model, DiTLoss(make_scheduler()), [(x[i:i + 1], y[i:i + 1], seeds[i:i + 1])
                                              for i in range(samples)]


def max_rel_diff(ref, other):
    """Largest per-tensor max |difference| / max |reference| over the parameters whose Fisher is not
    ~0 (at most 1e-6 of the largest value: e.g. attention key biases, whose gradient is zero but for
    rounding)."""
    top = max(float(f.abs().max()) for f in ref.values())
    return max(float((ref[n] - other[n]).abs().max() / ref[n].abs().max())
               for n in ref if float(ref[n].abs().max()) > 1e-6 * top)


MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def gemm_rate() -> float:
    """FLOP/s of one large float32 matrix product on this machine (what matmuls reach at best)."""
    a = torch.randn(1024, 1024)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, a)
        times.append(time.perf_counter() - t0)
    return 2 * 1024**3 / min(times)


def where_time_goes(model, loss, batches, chunk):
    """One profiled Fisher, per sample: ms in matrix products and in all other ops, op calls, minor
    page faults."""
    n, faults = len(batches), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fisher_diagonal(model, loss, iter(batches), n, progress=False, chunk=chunk)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL) / 1e3 / n
    other = sum(e.self_cpu_time_total for e in events) / 1e3 / n - matmul
    calls = sum(e.count for e in events) / n
    return f"matmul {matmul:.2f} ms, other ops {other:.2f} ms, {calls:.0f} op calls, " \
           f"{faults / n:.0f} page faults"


def profile_lines(name, model, loss, batches, chunk, rate):
    """Where the time goes, each way, and the FLOP floor: the loss's FLOPs per sample at `rate`."""
    with FlopCounterMode(display=False) as counter:
        loss(model, batches[0]).backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    print(f"  {name}: {flops / 1e6:.0f} MFLOP a sample (forward + backward), at {rate / 1e9:.0f} "
          f"GFLOP/s {flops / rate * 1e3:.2f} ms")
    print(f"    loop:    {where_time_goes(model, loss, batches, 1)}")
    print(f"    batched: {where_time_goes(model, loss, batches, chunk)}")


def bench(model, loss, batches, chunk, repeats):
    """(loop seconds, batched seconds, max rel diff): medians over `repeats` alternating runs of
    each way."""
    times, values = {1: [], chunk: []}, {}
    for _ in range(repeats):
        for k in (1, chunk):
            t0 = time.perf_counter()
            values[k] = fisher_diagonal(model, loss, iter(batches), len(batches), progress=False,
                                        chunk=k)
            times[k].append(time.perf_counter() - t0)
    return (statistics.median(times[1]), statistics.median(times[chunk]),
            max_rel_diff(values[1], values[chunk]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--samples", type=int, default=256,
                        help="single samples per Fisher diagonal (default 256)")
    parser.add_argument("--chunk", type=int, default=16,
                        help="samples per vmapped pass (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each way, alternating (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help="then where the time goes (torch.profiler)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    print(f"machine: {platform.processor() or platform.machine()} / {platform.platform()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"settings: {args.samples} seeded samples, chunk {args.chunk}, median of {args.repeats} "
          "alternating runs, float32, random weights (seed 0)\n")
    print("| model | parameters | N | chunk | loop s | batched s | speed-up | max rel diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    runs = {name: setup(kwargs, args.samples) for name, kwargs in MODELS}
    for name, (model, loss, batches) in runs.items():
        loop, batched, diff = bench(model, loss, batches, args.chunk, args.repeats)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params:,} | {args.samples} | {args.chunk} | {loop:.2f} | {batched:.2f} "
              f"| {loop / batched:.2f}x | {diff:.1e} |", flush=True)
    if args.profile:
        print("\nwhere the time goes (one profiled run of each way; self CPU time, profiler "
              "overhead included):")
        rate = gemm_rate()
        for name, (model, loss, batches) in runs.items():
            profile_lines(name, model, loss, batches, args.chunk, rate)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; max rel diff: per parameter, max "
          "|loop - batched| / max |loop|, over those whose Fisher is above 1e-6 of the largest")


if __name__ == "__main__":
    main()
