"""Our erase loop (`erase.unlearn`, dual SFR-on-style: masked, clipped GA forget steps with one
AdamW, retain steps with another) against a bare PyTorch loop doing the same math on the same model
and batches, side by side."""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DIGITS, SMALL_LATENT, header, interleaved, table  # noqa: E402
from dualerase.models.dit import build_dit, make_scheduler  # noqa: E402
from dualerase.models.loss import DiTLoss  # noqa: E402
from dualerase.unlearn.dualoptim import EraseConfig, alpha_at, make_optimizers, unlearn  # noqa: E402
from dualerase.unlearn.methods import MethodConfig, make_method  # noqa: E402


def bare_loop(model, loss_fn, forget, retain, mask, cfg: EraseConfig) -> None:
    """The same math as `unlearn` in dual mode, written plainly: no checks, no log, no progress
    bar."""
    params = list(model.parameters())
    masks = [mask[n] for n, _ in model.named_parameters()]
    opt_f = torch.optim.AdamW(params, lr=cfg.forget_lr, weight_decay=0.0)
    opt_r = torch.optim.AdamW(params, lr=cfg.retain_lr, weight_decay=0.0)
    model.train()
    for step, (fb, rb) in enumerate(zip(forget, retain)):
        opt_f.zero_grad(set_to_none=True)
        (-alpha_at(step, cfg) * loss_fn(model, fb)).backward()
        for p, m in zip(params, masks):
            p.grad.mul_(m)
        torch.nn.utils.clip_grad_norm_(params, cfg.forget_clip)
        opt_f.step()
        opt_r.zero_grad(set_to_none=True)
        loss_fn(model, rb).backward()
        opt_r.step()


def ours(model, method, forget, retain, mask, cfg: EraseConfig) -> None:
    """`unlearn` as erasure runs it (dual optimizers, mask, clip, finiteness checks, per-step
    log)."""
    opts = make_optimizers(list(model.parameters()), cfg)
    unlearn(model, method, iter(forget), iter(retain), cfg, mask=mask, optimizers=opts,
            progress=False)


def measure(name: str, arch: dict, *, batch: int, steps: int, repeats: int, device: str = "cpu",
            bf16: bool = False) -> dict:
    """Ratio of our loop's time to the bare loop's on one model (on `device`, under bf16 autocast
    with `bf16`), and the largest difference of the weights both end at (0: the same math)."""
    device = torch.device(device)
    torch.manual_seed(0)
    with device:
        base = build_dit(**arch)
    gen = torch.Generator().manual_seed(1)
    shape = (batch, arch["in_channels"], arch["sample_size"], arch["sample_size"])
    batches = [(torch.randn(shape, generator=gen).clamp(-1, 1).to(device),
                torch.randint(0, arch["num_classes"], (batch,), generator=gen).to(device))
               for _ in range(2 * steps)]
    forget, retain = batches[:steps], batches[steps:]
    mask = {n: (torch.rand(p.shape, generator=gen) < 0.5).to(device)
            for n, p in base.named_parameters()}
    cfg = EraseConfig(outer_steps=steps, batch_size=batch, forget_lr=2e-4, retain_lr=1e-4)
    loss_fn = DiTLoss(make_scheduler())
    method = make_method(MethodConfig(name="ga", forget_reduction="mean", retain_reduction="mean"),
                         loss_fn, forget_class=0, num_classes=arch["num_classes"])
    finals = {}

    def run(kind):
        model = copy.deepcopy(base)
        torch.manual_seed(2)  # the loss's timesteps and noise: the same draws in both loops
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if kind == "ours":
                ours(model, method, forget, retain, mask, cfg)
            else:
                bare_loop(model, loss_fn, forget, retain, mask, cfg)
        finals[kind] = model

    run("ours"), run("bare")  # warm-up, and the weights each loop ends at
    diff = max((a - b).abs().max().item()
               for a, b in zip(finals["ours"].parameters(), finals["bare"].parameters()))
    finals.clear()
    t = interleaved({"ours": lambda: run("ours"), "bare": lambda: run("bare")}, repeats)
    params = sum(p.numel() for p in base.parameters())
    return {"model": name, "parameters": f"{params / 1e6:.2f}M", "batch": batch,
            "outer steps": steps, "bare s": t["bare"], "ours s": t["ours"],
            "ratio ours/bare": t["ours"] / t["bare"], "max weight diff": diff}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--steps", type=int, default=50, help="outer steps per timed run")
    p.add_argument("--batch", type=int, default=64, help="forget and retain batch size")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved timed runs of each loop (median)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header("erase loop: unlearn vs a bare PyTorch loop (dual AdamW, GA forget, 50% mask, "
                 "clip 1)", vars(args)))
    kw = dict(batch=args.batch, steps=args.steps, repeats=args.repeats)
    rows = [measure("digits DiT", DIGITS, **kw), measure("small latent DiT", SMALL_LATENT, **kw)]
    print(table(rows))


if __name__ == "__main__":
    main()
