"""Saliency: Fisher diagonals on forget and retain data, and the SFR-on mask built from their ratio."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from erase.dualoptim import world


def _per_sample_sum(model, loss, samples, num_samples, transform, desc, progress, partial=None, clip=None):
    """Sum over `num_samples` batches (single samples for a Fisher) of transform(gradient of the loss), per parameter.

    `loss(model, batch)` is a tensor, or an iterable of tensors whose gradients add up (a loss back-propagated in
    pieces, e.g. Selective Amnesia's sum over timesteps). With `clip`, each batch's whole gradient is first scaled
    to norm at most `clip` (SalUn's saliency). Under torch.distributed each process takes every world-th batch of
    the same stream and the sums are added up.
    `partial` (optional) keeps running sums: `partial.load(desc)` gives (samples done, sums) saved by an earlier,
    killed call, and `partial.save(desc, done, sums)` runs every `partial.every` samples."""
    model.eval()  # as in the public SFR-on code: no dropout while measuring
    rank, size = world()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in named}
    start = 0
    found = partial.load(desc) if partial is not None else None
    if found is not None:
        start, saved = found
        total = {n: saved[n].to(p.device) for n, p in named}
    next_save = start + (partial.every if partial is not None else 0)
    it = iter(samples)
    for i in tqdm(range(num_samples), desc=desc, disable=not progress or rank != 0):
        batch = next(it)  # drawn even when skipped, so the stream stays aligned
        if i < start or i % size != rank:
            continue
        model.zero_grad(set_to_none=True)
        out = loss(model, batch)
        for part in [out] if isinstance(out, torch.Tensor) else out:
            part.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for _, p in named], clip)
        for n, p in named:
            if p.grad is not None:
                total[n] += transform(p.grad.detach())
        if partial is not None and next_save <= i + 1 < num_samples:  # each process saves its own share's sums
            partial.save(desc, i + 1, total)
            next_save = i + 1 + partial.every
    model.zero_grad(set_to_none=True)
    if size > 1:
        for t in total.values():
            dist.all_reduce(t)
    return total


def fisher_diagonal(model: torch.nn.Module, loss: Callable[[torch.nn.Module, object], torch.Tensor],
                    samples: Iterable, num_samples: int, *, desc: str = "fisher", progress: bool = True,
                    partial=None) -> dict[str, torch.Tensor]:
    """Mean over `num_samples` single-sample batches of the squared gradient of the (positive) loss, per parameter."""
    total = _per_sample_sum(model, loss, samples, num_samples, torch.square, desc, progress, partial)
    return {n: f / num_samples for n, f in total.items()}


def gradient_sum(model: torch.nn.Module, loss: Callable[[torch.nn.Module, object], torch.Tensor],
                 batches: Iterable, num_batches: int, *, clip: float | None = None, desc: str = "gradient",
                 progress: bool = True, partial=None) -> dict[str, torch.Tensor]:
    """Sum over `num_batches` batches of the gradient of the loss, each clipped to norm `clip` (SalUn's saliency)."""
    return _per_sample_sum(model, loss, batches, num_batches, lambda g: g, desc, progress, partial, clip)


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Keep exactly the global top `fraction` of coordinates by score; ties at the threshold go by rank (parameter
    order, then position), so a mask never keeps more than asked when many scores are equal (e.g. zero gradients)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = max(1, int(fraction * flat.numel()))  # int(), as SalUn's threshold index
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values.item()  # the k-th largest score
    ties = k - int((flat > threshold).sum())  # coordinates at the threshold still to keep
    mask = {}
    for n, s in scores.items():
        keep = s > threshold
        if ties > 0:
            at = (s == threshold).flatten().nonzero().flatten()[:ties]
            keep.view(-1)[at] = True
            ties -= len(at)
        mask[n] = keep
    return mask


def sfron_mask(
    fisher_forget: dict[str, torch.Tensor], fisher_retain: dict[str, torch.Tensor], gamma: float, eps: float = 1e-15
) -> dict[str, torch.Tensor]:
    """SFR-on's mask: keep a weight for forgetting where (F_f + eps) / (F_r + eps) >= gamma."""
    return {n: (fisher_forget[n] + eps) / (fisher_retain[n] + eps) >= gamma for n in fisher_forget}


def mask_fraction(mask: dict[str, torch.Tensor]) -> float:
    """Share of coordinates the mask keeps."""
    kept = sum(int(m.sum()) for m in mask.values())
    return kept / max(1, sum(m.numel() for m in mask.values()))
