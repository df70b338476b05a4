"""Saliency: Fisher diagonals and gradient sums over a method's data, and the masks they give.

The masks are SFR-on's Fisher ratio and SalUn's top share."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from dualerase.unlearn.parallel import world


@runtime_checkable
class DrawnLoss(Protocol):
    """A loss whose per-sample gradients can be vmapped: its random draws are made apart.

    `loss(model, batch)` is `of_draws(model, *draws(model, batch))`. A Fisher diagonal of any other
    loss loops over samples, one backward each."""

    def draws(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, ...]:
        """Tensors holding every random draw of `loss(model, batch)`.

        Their shapes are the same for every batch of a stream."""

    def of_draws(self, model: Callable, *draws: torch.Tensor) -> torch.Tensor:
        """`loss(model, batch)` as a pure function of the batch's draws.

        It calls `model` only (no device query), so that torch.func can vmap it."""


def _vmapped_gradients(model, loss: DrawnLoss, named, batches) -> dict[str, torch.Tensor]:
    """Each batch's loss gradient, stacked along a new first dimension, from one torch.func vmap."""
    def batch_loss(params, draws):
        return loss.of_draws(lambda *args, **kwargs: functional_call(model, params, args, kwargs),
                             *draws)

    draws = tuple(torch.stack(d) for d in zip(*(loss.draws(model, b) for b in batches)))
    params = {n: p.detach() for n, p in named}
    # functional_call leaves a module reached by two paths (tied embedders) holding its
    # stand-ins: put them back
    slots = [(m, name, p) for m in model.modules() for name, p in m._parameters.items()]
    try:
        # math attention: CPU's fused kernel has no vmap batching rule (torch would warn and run
        # it sample by sample)
        with sdpa_kernel(SDPBackend.MATH):
            return vmap(grad(batch_loss), in_dims=(None, 0))(params, draws)
    finally:
        for m, name, p in slots:
            m._parameters[name] = p


def _per_sample_sum(model, loss, samples, num_samples, transform, desc, progress, partial=None,
                    clip=None, chunk=1):
    """Sum over `num_samples` batches (single samples for a Fisher) of transform(gradient of the
    loss), per parameter (`transform` may work in place: each gradient is used once).

    `loss(model, batch)` is a tensor, or an iterable of tensors whose gradients add up (a loss
    back-propagated in pieces, e.g. Selective Amnesia's sum over timesteps). With `clip`, each
    batch's whole gradient is first scaled to norm at most `clip` (SalUn's saliency). Under
    torch.distributed each process takes every world-th batch of the same stream and the sums are
    added up.

    With `chunk` > 1, a `DrawnLoss`, no clip and no activation checkpointing, a process's batches go
    `chunk` at a time through one vmapped pass instead of one backward each: the same sums up to
    float rounding, faster, `chunk` gradients held at once.

    `partial` (optional) keeps running sums: `partial.load(desc)` gives (samples done, sums) saved
    by an earlier, killed call, and `partial.save(desc, done, sums)` runs every `partial.every`
    samples (at a chunk's end)."""
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
    # torch.func can't pass its saved-tensor hooks
    checkpointed = getattr(model, "is_gradient_checkpointing", False)
    if clip is not None or checkpointed or not isinstance(loss, DrawnLoss):
        chunk = 1

    def add(batches):
        """Add transform(gradient) of each batch to the sums."""
        if chunk > 1:
            for n, g in _vmapped_gradients(model, loss, named, batches).items():
                total[n] += transform(g).sum(0)
            return
        model.zero_grad(set_to_none=True)
        out = loss(model, batches[0])
        for part in [out] if isinstance(out, torch.Tensor) else out:
            part.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for _, p in named], clip)
        for n, p in named:
            if p.grad is not None:
                total[n] += transform(p.grad.detach())

    pending = []
    it = iter(samples)
    for i in tqdm(range(num_samples), desc=desc, disable=not progress or rank != 0):
        batch = next(it)  # drawn even when skipped, so the stream stays aligned
        if i < start or i % size != rank:
            continue
        pending.append(batch)
        if len(pending) < chunk and i + size < num_samples:
            continue  # this process's chunk is not full and more of its batches follow
        add(pending)
        pending = []
        # each process saves its own share's sums
        if partial is not None and next_save <= i + 1 < num_samples:
            partial.save(desc, i + 1, total)
            next_save = i + 1 + partial.every
    model.zero_grad(set_to_none=True)
    if size > 1:
        for t in total.values():
            dist.all_reduce(t)
    return total


def fisher_diagonal(model: torch.nn.Module,
                    loss: Callable[[torch.nn.Module, object], torch.Tensor], samples: Iterable,
                    num_samples: int, *, desc: str = "fisher", progress: bool = True,
                    partial=None, chunk: int = 1) -> dict[str, torch.Tensor]:
    """The Fisher diagonal: the mean squared gradient of the (positive) loss over single samples.

    Args:
        model: the model; its parameters that require grad are measured, in eval mode.
        loss: `loss(model, batch)`, a tensor or an iterable of tensors whose gradients add up.
        samples: single-sample batches; `num_samples` of them are read.
        num_samples: how many.
        desc: the progress bar's name, and `partial`'s key.
        progress: show a progress bar (on rank 0).
        partial: keeps running sums so that a killed call continues (see `_per_sample_sum`).
        chunk: > 1: per-sample gradients of that many samples at a time, vmapped, if the loss is a
            `DrawnLoss` (the same values up to float rounding).

    Returns:
        Parameter name -> its diagonal, shaped as the parameter."""
    # squared in place: each gradient is read once, and a copy of k stacked ones would cost
    # as much again to allocate
    total = _per_sample_sum(model, loss, samples, num_samples, torch.Tensor.square_, desc, progress,
                            partial, chunk=chunk)
    return {n: f / num_samples for n, f in total.items()}


def gradient_sum(model: torch.nn.Module, loss: Callable[[torch.nn.Module, object], torch.Tensor],
                 batches: Iterable, num_batches: int, *, clip: float | None = None,
                 desc: str = "gradient", progress: bool = True,
                 partial=None) -> dict[str, torch.Tensor]:
    """The sum over `num_batches` batches of the loss's gradient (SalUn's saliency).

    With `clip`, each batch's whole gradient is first scaled to norm at most `clip`; the other
    arguments are `fisher_diagonal`'s. Returns parameter name -> summed gradient."""
    return _per_sample_sum(model, loss, batches, num_batches, lambda g: g, desc, progress, partial,
                           clip)


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Keep exactly the global top `fraction` of coordinates by score.

    Ties at the threshold go by rank (parameter order, then position), so a mask never keeps more
    than asked when many scores are equal (e.g. zero gradients). Returns name -> bool tensor."""
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
    fisher_forget: dict[str, torch.Tensor], fisher_retain: dict[str, torch.Tensor], gamma: float,
    eps: float = 1e-15
) -> dict[str, torch.Tensor]:
    """SFR-on's mask: keep a weight for forgetting where (F_f + eps) / (F_r + eps) >= gamma."""
    return {n: (fisher_forget[n] + eps) / (fisher_retain[n] + eps) >= gamma for n in fisher_forget}


def mask_fraction(mask: dict[str, torch.Tensor]) -> float:
    """Share of coordinates the mask keeps."""
    kept = sum(int(m.sum()) for m in mask.values())
    return kept / max(1, sum(m.numel() for m in mask.values()))
