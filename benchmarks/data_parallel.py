"""Data parallelism for erasure: our flat all-reduce of every gradient
(`dualerase.unlearn.parallel.average_gradients`) against DDP through accelerate's `Accelerator`
(bucketed all-reduce overlapped with backward), in 2 processes over gloo, on the same dual
forget/retain loop, model and batches. Run it plainly: it relaunches itself under
torch.distributed.run.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DIGITS, SMALL_LATENT, header, interleaved, table  # noqa: E402
from dualerase.models.dit import build_dit, make_scheduler  # noqa: E402
from dualerase.models.loss import DiTLoss  # noqa: E402
from dualerase.unlearn.dualoptim import EraseConfig, alpha_at  # noqa: E402
from dualerase.unlearn.parallel import average_gradients  # noqa: E402


class Forward:
    """What DiTLoss needs of a model (device, dtype, call) around a DDP wrapper, which hides
    them."""

    def __init__(self, ddp, module):
        self.ddp, self.device, self.dtype = ddp, module.device, module.dtype

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)


def loop(model, forward, average, batches, mask, steps: int) -> None:
    """Dual erase steps (masked, clipped GA forget step; retain step), each process on its share of
    every batch; `average` averages the gradients over processes (None: the DDP wrapper already did
    in backward)."""
    params = list(model.parameters())
    masks = [mask[n] for n, _ in model.named_parameters()]
    opt_f = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    opt_r = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    loss_fn, cfg = DiTLoss(make_scheduler()), EraseConfig(outer_steps=steps)
    for step in range(steps):
        for side, opt in (("forget", opt_f), ("retain", opt_r)):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward, batches[side][step])
            (-alpha_at(step, cfg) * loss if side == "forget" else loss).backward()
            if average is not None:
                average(params)
            if side == "forget":
                for p, m in zip(params, masks):
                    p.grad.mul_(m)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()


def measure(name: str, arch: dict, args, state) -> dict | None:
    """Steps/s of both ways of averaging on one model and the largest weight difference they end
    at."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    base = build_dit(**arch)
    gen = torch.Generator().manual_seed(1)
    n, rank = args.batch // state.num_processes, state.process_index
    shape = (args.batch, arch["in_channels"], arch["sample_size"], arch["sample_size"])
    batches = {side: [(torch.randn(shape, generator=gen).clamp(-1, 1)[rank * n:(rank + 1) * n],
                       torch.randint(0, arch["num_classes"], (args.batch,),
                                     generator=gen)[rank * n:(rank + 1) * n],
                       torch.randint(0, 2**62, (args.batch,),
                                     generator=gen)[rank * n:(rank + 1) * n])
                      for _ in range(args.steps)] for side in ("forget", "retain")}
    mask = {k: torch.rand(p.shape, generator=gen) < 0.5 for k, p in base.named_parameters()}
    accelerator = Accelerator(cpu=True)
    finals = {}

    def hand():
        model = copy.deepcopy(base).train()
        loop(model, model, average_gradients, batches, mask, args.steps)
        finals["hand"] = model

    def ddp():
        model = copy.deepcopy(base).train()
        wrapped = accelerator.prepare_model(model)
        loop(model, Forward(wrapped, model), None, batches, mask, args.steps)
        finals["ddp"] = model

    hand(), ddp()  # warm-up
    diff = max((a - b).abs().max().item()
               for a, b in zip(finals["hand"].parameters(), finals["ddp"].parameters()))
    t = interleaved({"hand": hand, "ddp": ddp}, args.repeats)
    params = sum(p.numel() for p in base.parameters())
    return {"model": name, "parameters": f"{params / 1e6:.2f}M", "global batch": args.batch,
            "steps": args.steps, "hand steps/s": args.steps / t["hand"],
            "DDP steps/s": args.steps / t["ddp"], "DDP / hand": t["hand"] / t["ddp"],
            "max weight diff": diff}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--steps", type=int, default=30, help="outer steps per timed run")
    p.add_argument("--batch", type=int, default=64,
                   help="global forget and retain batch (split over processes)")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved timed runs of each way (median)")
    args = p.parse_args(argv)
    if "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
               str(args.processes), "--master_port", "29531", __file__,
               *(argv if argv is not None else sys.argv[1:])]
        raise SystemExit(subprocess.call(cmd,
                                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}))
    from accelerate import PartialState

    torch.set_num_threads(args.threads)
    state = PartialState(cpu=True)
    rows = [measure("digits DiT", DIGITS, args, state),
            measure("small latent DiT", SMALL_LATENT, args, state)]
    if state.is_main_process:
        print(header("data parallel: flat all-reduce vs accelerate DDP (gloo, CPU)",
                     {**vars(args), "backend": "gloo"}))
        print(table(rows))


if __name__ == "__main__":
    main()
