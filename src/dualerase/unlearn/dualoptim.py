"""DualOptim (Zhong, Luo, Liu, 2025), Algorithm 1: alternating forget and retain optimizers."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.distributed as dist
from annotated_types import Ge, Gt, Le, Lt
from tqdm.auto import tqdm

from dualerase.unlearn.parallel import average_gradients, world

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class EraseConfig:
    """The config's `erase` group: the loop's knobs, named after the paper (T_o, T_f, T_r, ...)."""

    outer_steps: Annotated[int, Gt(0)] = 500  # T_o
    forget_steps: Annotated[int, Ge(0)] = 1  # T_f: forget updates per outer step
    retain_steps: Annotated[int, Ge(0)] = 1  # T_r: retain updates per outer step
    # "dual": Optim_f and Optim_r with separate states; "shared": one optimizer for both
    optimizer: Literal["dual", "shared"] = "dual"
    forget_optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # Optim_f (dual mode)
    forget_lr: Annotated[float, Gt(0)] = 5e-5  # eta_f
    forget_weight_decay: Annotated[float, Ge(0)] = 0.0
    # Optim_r: the pretraining optimizer (also the shared optimizer's kind)
    retain_optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    retain_lr: Annotated[float, Gt(0)] = 5e-5  # eta_r
    retain_weight_decay: Annotated[float, Ge(0)] = 0.0
    shared_lr: Annotated[float, Gt(0)] = 1e-4  # eta of the shared-optimizer baseline
    # forget-loss weight (SalUn's alpha_weights: the retain loss's)
    alpha: Annotated[float, Ge(0)] = 1.0
    # "cosine": alpha_t = alpha * (1 + cos(pi t / T_o)) / 2; "constant"
    alpha_schedule: Literal["cosine", "constant"] = "cosine"
    # global grad-norm clip of forget (and joint) steps, after the mask (SalUn: before); null: none
    forget_clip: Annotated[float | None, Gt(0)] = 1.0
    retain_clip: Annotated[float | None, Gt(0)] = None  # global grad-norm clip of retain steps
    mask_retain: bool = False  # also mask retain gradients ("SalUn with alternating updates")
    batch_size: Annotated[int, Gt(0)] = 1  # forget and retain batch size
    # save checkpoint-<step> (weights, both optimizers, RNG) every N outer steps; 0: never
    checkpoint_every: Annotated[int, Ge(0)] = 50
    # the erased model is an EMA of the weights after each outer step, started at the base model's,
    # with this decay (SA evaluates such an EMA, 0.9999); null: the weights themselves, as DualOptim
    ema_decay: Annotated[float | None, Gt(0), Lt(1)] = None
    # Share of labels replaced by the null class, per kind of batch (applied by the pipeline's
    # data). Forget batches: 0, so gradient ascent never hits the unconditional branch that guidance
    # uses for every class. Retain batches: DiT's 0.1, so retain steps keep that branch trained.
    # (The public code runs both at 0.1, in train mode.)
    forget_label_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    retain_label_dropout: Annotated[float, Ge(0), Lt(1)] = 0.1
    # Stop when the class is gone (opt-in; the published recipes fix T_o): every `probe_every` outer
    # steps a probe samples `probe_samples` images of the forget class with the evaluation sampler
    # at `probe_steps` steps and scores them; erasure ends after two probes in a row at or below
    # this forget accuracy, or at outer_steps. null: off
    stop_at_forget_accuracy: Annotated[float | None, Ge(0), Le(1)] = None
    probe_every: Annotated[int, Gt(0)] = 25
    probe_samples: Annotated[int, Gt(0)] = 32
    probe_steps: Annotated[int, Gt(0)] = 25


# an update that multiplies the largest |weight| by this much, after which the next step's loss or
# gradient is non-finite, is where erasure diverged (a step at lr 5e-5 changes it by ~1e-4)
GROWTH = 10.0


class DivergenceError(RuntimeError):
    """A loss, gradient or weight became NaN or infinite during unlearning.

    The `side` ("forget", "retain" or "joint") step of outer step `step` diverged for `reason`;
    `message` replaces the default message (e.g. with advice added)."""

    def __init__(self, side: str, step: int, reason: str, message: str | None = None):
        super().__init__(message or f"{side} step at outer step {step}: {reason}")
        self.side, self.step, self.reason = side, step, reason


def alpha_at(step: int, cfg: EraseConfig) -> float:
    """The loss weight alpha_t at outer step `step` (0-based).

    `cfg.alpha`, constant or cosine-decayed towards 0 over T_o (`cfg.alpha_schedule`; another
    schedule raises ValueError)."""
    if cfg.alpha_schedule == "constant":
        return cfg.alpha
    if cfg.alpha_schedule == "cosine":
        return cfg.alpha * (1 + math.cos(math.pi * step / cfg.outer_steps)) / 2
    raise ValueError(f"unknown alpha_schedule {cfg.alpha_schedule!r}: use 'cosine' or 'constant'")


def make_optimizers(params: list[torch.nn.Parameter], cfg: EraseConfig):
    """The forget and retain optimizers over `params` (fused on CUDA).

    Returns (Optim_f, Optim_r): two optimizers with separate states in dual mode, the same object
    twice in shared mode (another mode raises ValueError)."""
    retain_cls = OPTIMIZERS[cfg.retain_optimizer]
    # one kernel per step on CUDA
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if cfg.optimizer == "shared":
        shared = retain_cls(params, lr=cfg.shared_lr, weight_decay=cfg.retain_weight_decay, **fused)
        return shared, shared
    if cfg.optimizer != "dual":
        raise ValueError(f"unknown optimizer mode {cfg.optimizer!r}: use 'dual' or 'shared'")
    forget = OPTIMIZERS[cfg.forget_optimizer](params, lr=cfg.forget_lr,
                                              weight_decay=cfg.forget_weight_decay, **fused)
    retain = retain_cls(params, lr=cfg.retain_lr, weight_decay=cfg.retain_weight_decay, **fused)
    return forget, retain


def _check(where, losses: list[torch.Tensor], norm: torch.Tensor,
           params) -> tuple[list[float], float, float]:
    """(losses, gradient norm, largest |weight|) as floats, read in ONE host sync per update: raise
    DivergenceError if a loss, the gradient norm or any weight is not finite, here or (under
    torch.distributed) on another process, so that all processes stop together and none is left
    waiting in an all-reduce."""
    # max |w|, one fused pass: non-finite iff a weight is. Checked after every update (a read of the
    # weights, small beside the step), so that a step that overflows the weights is named, not the
    # next step whose loss the broken weights then spoil
    top = torch.nn.utils.get_total_norm(params, math.inf)
    stats = torch.stack([*(loss.detach().float() for loss in losses), norm.detach().float(),
                         top.float()])
    if world()[1] > 1:
        finite = torch.isfinite(stats).all().float()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        stats = torch.cat([stats, finite.view(1)])
    *values, ok = stats.tolist() if world()[1] > 1 else [*stats.tolist(), 1.0]
    *loss_values, norm_v, weights_v = values
    bad = [v for v in loss_values if not math.isfinite(v)]
    if bad:
        reason = f"loss is {bad[0]}"
    elif not math.isfinite(norm_v):
        reason = f"gradient norm is {norm_v}"
    elif not math.isfinite(weights_v):
        reason = "weights became non-finite"
    elif not ok:
        reason = "loss is not finite on another process"
    else:
        reason = None
    if reason is not None:
        raise DivergenceError(*where, reason)
    return loss_values, norm_v, weights_v


def _update(params, masks, weighted, optimizer, clip, keep_masked, where, clip_then_mask=False):
    """One optimizer step on the sum of w * loss over `weighted` [(w, loss), ...]: backward, average
    over processes, mask the gradients, clip, step (or clip, then mask: `clip_then_mask`, SalUn's
    order). `where` = (side, outer step) names the step if it diverges. A diverged step has been
    taken when it raises: its weights are discarded.

    Returns ([each loss], the gradient norm before clipping (of the masked gradient, unless
    `clip_then_mask`), the largest |weight| after the step)."""
    optimizer.zero_grad(set_to_none=True)
    sum(w * loss for w, loss in weighted).backward()
    if world()[1] > 1:
        average_gradients(params)
    if masks is not None and not clip_then_mask:
        _mask(params, masks)
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
    if masks is not None and clip_then_mask:
        _mask(params, masks)
    # A separate optimizer that only ever sees masked gradients has zero state at masked
    # coordinates, so Adam (or SGD) moves them by exactly 0; decoupled weight decay would still
    # shrink them, so then they are put back after the step (a copy of every masked value: only paid
    # when that optimizer decays weights).
    decays = keep_masked and any(g.get("weight_decay", 0) for g in optimizer.param_groups)
    frozen = [p.detach()[~m].clone() for p, m in zip(params, masks)] if decays else None
    optimizer.step()
    if frozen is not None:
        with torch.no_grad():
            for p, m, v in zip(params, masks, frozen):
                p[~m] = v
    return _check(where, [loss for _, loss in weighted], norm, params)


def _mask(params, masks) -> None:
    """Zero the gradient of every masked-out coordinate."""
    for p, m in zip(params, masks):
        if p.grad is not None:
            p.grad.mul_(m)


def batches_per_step(method, cfg: EraseConfig) -> tuple[int, int]:
    """The (forget, retain) batches one outer step consumes.

    T_f and T_r, or one each for a joint step (a `joint` method with a shared optimizer)."""
    if cfg.optimizer == "shared" and getattr(method, "joint", False):
        return 1, 1
    return cfg.forget_steps, cfg.retain_steps


def unlearn(
    model: torch.nn.Module,
    method,
    forget_data: Iterator,
    retain_data: Iterator,
    cfg: EraseConfig,
    *,
    mask: dict[str, torch.Tensor] | None = None,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None,
    on_step: Callable[[dict], bool | None] | None = None,
    start_step: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Algorithm 1: T_o times, T_f forget updates with Optim_f then T_r retain updates with Optim_r.

    A method whose original form is one joint step (`method.joint`: SalUn, SA) gets, with a shared
    optimizer, ONE update on the weighted sum of both losses per outer step. Data parallel: under
    torch.distributed every process feeds its own share of each batch and the gradients are
    averaged before masking and clipping, so all processes take the same step (losses in the log
    are process-local).

    Args:
        model: the model to erase, in place (its parameters that require grad).
        method: a `Method`: its `forget_loss(model, batch)` (what a forget step minimises),
            `retain_loss(model, batch)` and `alpha_weights` (which loss alpha_t weights).
        forget_data, retain_data: endless forget and retain batches.
        cfg: the loop's knobs.
        mask: parameter name -> 0/1 tensor; masked-out coordinates get no forget gradient (nor a
            retain gradient with `cfg.mask_retain`). None: no mask.
        optimizers: (Optim_f, Optim_r) to continue with; None: fresh ones from `make_optimizers`.
        on_step: runs after each outer step with its record; True ends erasure there (early stop).
        start_step: the outer step to resume at (a restored checkpoint).
        progress: show a progress bar (on rank 0).

    Returns:
        One record per outer step run: step, alpha, both losses and the gradient norms.

    Raises:
        DivergenceError: a loss, gradient norm or weight became non-finite."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    masks = None if mask is None else [mask[n].to(p.device, torch.bool) for n, p in named]
    optim_f, optim_r = optimizers if optimizers is not None else make_optimizers(params, cfg)
    joint = optim_f is optim_r and getattr(method, "joint", False)  # see batches_per_step
    keep_masked = masks is not None and optim_f is not optim_r
    order = getattr(method, "clip_then_mask", False)
    model.train()
    log = []
    # (side, step, largest |weight| before, after) of the last update: a loss that turns non-finite
    # on finite weights that update blew up is that update's divergence (the side to blame)
    last, top = None, float(torch.nn.utils.get_total_norm(params, math.inf)) if params else 0.0

    def update(side, weighted, optimizer, clip, side_masks, keep):
        nonlocal last, top
        try:
            values, norm, after = _update(params, side_masks, weighted, optimizer, clip, keep,
                                          (side, step), order)
        except DivergenceError as err:
            if last is None or err.reason.startswith("weights") or last[3] < GROWTH * last[2]:
                raise
            raise DivergenceError(last[0], last[1], f"its update took the largest weight from "
                                  f"{last[2]:.3g} to {last[3]:.3g}, and the {err.side} step after "
                                  f"it failed ({err.reason})") from None
        last, top = (side, step, top, after), after
        return values, norm

    for step in tqdm(range(start_step, cfg.outer_steps), desc="erase",
                     disable=not progress or world()[0] != 0, initial=start_step,
                     total=cfg.outer_steps):
        alpha = alpha_at(step, cfg)
        w_f, w_r = (alpha, 1.0) if method.alpha_weights == "forget" else (1.0, alpha)
        record = {"step": step, "alpha": alpha}
        if joint:
            f, r = (method.forget_loss(model, next(forget_data)),
                    method.retain_loss(model, next(retain_data)))
            (f_loss, r_loss), norm = update("joint", [(w_f, f), (w_r, r)], optim_f,
                                            cfg.forget_clip, masks, False)
            record.update(forget_loss=f_loss, retain_loss=r_loss, forget_grad_norm=None,
                          retain_grad_norm=None, joint_grad_norm=norm)
        else:
            f_loss = f_norm = r_loss = r_norm = 0.0
            for _ in range(cfg.forget_steps):
                loss = method.forget_loss(model, next(forget_data))
                (value,), norm = update("forget", [(w_f, loss)], optim_f, cfg.forget_clip, masks,
                                        keep_masked)
                f_loss, f_norm = (f_loss + value / cfg.forget_steps,
                                  f_norm + norm / cfg.forget_steps)
            for _ in range(cfg.retain_steps):
                loss = method.retain_loss(model, next(retain_data))
                (value,), norm = update("retain", [(w_r, loss)], optim_r, cfg.retain_clip,
                                        masks if cfg.mask_retain else None,
                                        keep_masked and cfg.mask_retain)
                r_loss, r_norm = (r_loss + value / cfg.retain_steps,
                                  r_norm + norm / cfg.retain_steps)
            record.update(forget_loss=f_loss, retain_loss=r_loss, forget_grad_norm=f_norm,
                          retain_grad_norm=r_norm)
        log.append(record)
        if on_step is not None and on_step(record):
            break
    return log
