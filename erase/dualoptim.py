"""DualOptim (Zhong, Luo, Liu, 2025), Algorithm 1: alternate forget and retain steps, each with its own optimizer."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.distributed as dist
from annotated_types import Ge, Gt, Le, Lt
from tqdm.auto import tqdm

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class EraseConfig:
    """Knobs of the unlearning loop; names follow the paper (T_o, T_f, T_r, eta_f, eta_r, alpha)."""

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
    alpha: Annotated[float, Ge(0)] = 1.0  # forget-loss weight
    # "cosine": alpha_t = alpha * (1 + cos(pi t / T_o)) / 2; "constant"
    alpha_schedule: Literal["cosine", "constant"] = "cosine"
    # global grad-norm clip of forget steps (after the mask); null: none
    forget_clip: Annotated[float | None, Gt(0)] = 1.0
    retain_clip: Annotated[float | None, Gt(0)] = None  # global grad-norm clip of retain steps
    mask_retain: bool = False  # also mask retain gradients ("SalUn with alternating updates")
    batch_size: Annotated[int, Gt(0)] = 1  # forget and retain batch size
    # save checkpoint-<step> (weights, both optimizers, RNG) every N outer steps; 0: never
    checkpoint_every: Annotated[int, Ge(0)] = 50
    # Share of labels replaced by the null class, per kind of batch (applied by the pipeline's data). Forget batches:
    # 0, so gradient ascent never hits the unconditional branch that guidance uses for every class. Retain batches:
    # DiT's 0.1, so retain steps keep that branch trained. (The public code runs both at 0.1, in train mode.)
    forget_label_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    retain_label_dropout: Annotated[float, Ge(0), Lt(1)] = 0.1
    # Stop when the class is gone (opt-in; the published recipes fix T_o): every `probe_every` outer steps a probe
    # samples `probe_samples` images of the forget class with the evaluation sampler at `probe_steps` steps and scores
    # them; erasure ends after two probes in a row at or below this forget accuracy, or at outer_steps. null: off
    stop_at_forget_accuracy: Annotated[float | None, Ge(0), Le(1)] = None
    probe_every: Annotated[int, Gt(0)] = 25
    probe_samples: Annotated[int, Gt(0)] = 32
    probe_steps: Annotated[int, Gt(0)] = 25


class DivergenceError(RuntimeError):
    """A loss or gradient became NaN or infinite during unlearning: at which `side` ("forget", "retain" or "joint")
    step of which outer `step`, and why; `message` replaces the default one (e.g. with advice added)."""

    def __init__(self, side: str, step: int, reason: str, message: str | None = None):
        super().__init__(message or f"{side} step at outer step {step}: {reason}")
        self.side, self.step, self.reason = side, step, reason


def alpha_at(step: int, cfg: EraseConfig) -> float:
    """Forget weight at outer step `step` (0-based): constant, or cosine-decayed from alpha towards 0 over T_o."""
    if cfg.alpha_schedule == "constant":
        return cfg.alpha
    if cfg.alpha_schedule == "cosine":
        return cfg.alpha * (1 + math.cos(math.pi * step / cfg.outer_steps)) / 2
    raise ValueError(f"unknown alpha_schedule {cfg.alpha_schedule!r}: use 'cosine' or 'constant'")


def make_optimizers(params: list[torch.nn.Parameter], cfg: EraseConfig):
    """(Optim_f, Optim_r): two optimizers with separate states in dual mode, the same object in shared mode."""
    retain_cls = OPTIMIZERS[cfg.retain_optimizer]
    if cfg.optimizer == "shared":
        shared = retain_cls(params, lr=cfg.shared_lr, weight_decay=cfg.retain_weight_decay)
        return shared, shared
    if cfg.optimizer != "dual":
        raise ValueError(f"unknown optimizer mode {cfg.optimizer!r}: use 'dual' or 'shared'")
    forget = OPTIMIZERS[cfg.forget_optimizer](params, lr=cfg.forget_lr, weight_decay=cfg.forget_weight_decay)
    retain = retain_cls(params, lr=cfg.retain_lr, weight_decay=cfg.retain_weight_decay)
    return forget, retain


def world() -> tuple[int, int]:
    """(rank, number of processes) of the torch.distributed group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(params) -> None:
    """Data parallelism: every process holds the gradient of its share of the batch; average them in one all-reduce."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (so that all of them stop together, none left in an all-reduce)."""
    finite = torch.isfinite(loss.detach()).float()
    if world()[1] > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _update(params, masks, loss, optimizer, clip, keep_masked, where, clip_then_mask=False):
    """One optimizer step on `loss`: backward, average over processes, mask the gradients, clip, step (or clip, then
    mask: `clip_then_mask`, SalUn's order). `where` = (side, outer step) names the step if it diverges.

    Returns the gradient norm before clipping (of the masked gradient, unless `clip_then_mask`)."""
    if not _finite_everywhere(loss):
        raise DivergenceError(*where, f"loss is {loss.item()}" if not torch.isfinite(loss) else
                              "loss is not finite on another process")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if world()[1] > 1:
        _average_gradients(params)
    if masks is not None and not clip_then_mask:
        _mask(params, masks)
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
    if masks is not None and clip_then_mask:
        _mask(params, masks)
    if not torch.isfinite(norm):
        raise DivergenceError(*where, f"gradient norm is {norm.item()}")
    # A separate forget optimizer has zero state at masked coordinates, so Adam moves them by exactly 0; decoupled
    # weight decay would still shrink them, so they are put back after the step.
    frozen = [p.detach()[~m].clone() for p, m in zip(params, masks)] if keep_masked else None
    optimizer.step()
    if frozen is not None:
        with torch.no_grad():
            for p, m, v in zip(params, masks, frozen):
                p[~m] = v
    if not all(torch.isfinite(p).all() for p in params):
        raise DivergenceError(*where, "weights became non-finite")
    return norm.item()


def _mask(params, masks) -> None:
    """Zero the gradient of every masked-out coordinate."""
    for p, m in zip(params, masks):
        if p.grad is not None:
            p.grad.mul_(m)


def batches_per_step(method, cfg: EraseConfig) -> tuple[int, int]:
    """(forget, retain) batches one outer step consumes: T_f and T_r, or one each for a joint step."""
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

    `method` gives `forget_loss(model, batch)` (what a forget step minimises, e.g. the negated diffusion loss for
    gradient ascent), `retain_loss(model, batch)`, and `alpha_weights` ("forget" or "retain": which loss alpha_t
    weights). `mask` maps parameter names to 0/1 tensors; masked-out coordinates get no forget gradient.
    `optimizers` = (Optim_f, Optim_r) to continue with (default: fresh ones from `make_optimizers`); `start_step`
    resumes the loop there (a restored checkpoint). `on_step(record)` runs after every outer step; when it returns True,
    erasure ends there (an early stop).
    Data parallel: under torch.distributed every process feeds its own share of each batch and the gradients are
    averaged before masking and clipping, so all processes take the same step (losses in the log are process-local).
    A method whose original form is one joint step (`method.joint`, SalUn) gets, with a shared optimizer, ONE update on
    the weighted sum of both losses per outer step. Returns one log record per outer step with both losses and the
    gradient norms.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    masks = None if mask is None else [mask[n].to(p.device, torch.bool) for n, p in named]
    optim_f, optim_r = optimizers if optimizers is not None else make_optimizers(params, cfg)
    joint = optim_f is optim_r and getattr(method, "joint", False)  # see batches_per_step
    keep_masked = masks is not None and optim_f is not optim_r
    order = getattr(method, "clip_then_mask", False)
    model.train()
    log = []
    for step in tqdm(range(start_step, cfg.outer_steps), desc="erase", disable=not progress or world()[0] != 0,
                     initial=start_step, total=cfg.outer_steps):
        alpha = alpha_at(step, cfg)
        w_f, w_r = (alpha, 1.0) if method.alpha_weights == "forget" else (1.0, alpha)
        record = {"step": step, "alpha": alpha}
        if joint:
            f_loss = method.forget_loss(model, next(forget_data))
            r_loss = method.retain_loss(model, next(retain_data))
            norm = _update(params, masks, w_f * f_loss + w_r * r_loss, optim_f, cfg.forget_clip, False,
                           ("joint", step), order)
            record.update(forget_loss=f_loss.item(), retain_loss=r_loss.item(), forget_grad_norm=None,
                          retain_grad_norm=None, joint_grad_norm=norm)
        else:
            f_loss = f_norm = r_loss = r_norm = 0.0
            for _ in range(cfg.forget_steps):
                loss = method.forget_loss(model, next(forget_data))
                f_norm += _update(params, masks, w_f * loss, optim_f, cfg.forget_clip, keep_masked,
                                  ("forget", step), order) / cfg.forget_steps
                f_loss += loss.item() / cfg.forget_steps
            for _ in range(cfg.retain_steps):
                loss = method.retain_loss(model, next(retain_data))
                r_norm += _update(params, masks if cfg.mask_retain else None, w_r * loss, optim_r, cfg.retain_clip,
                                  keep_masked and cfg.mask_retain, ("retain", step),
                                  order) / cfg.retain_steps
                r_loss += loss.item() / cfg.retain_steps
            record.update(forget_loss=f_loss, retain_loss=r_loss, forget_grad_norm=f_norm, retain_grad_norm=r_norm)
        log.append(record)
        if on_step is not None and on_step(record):
            break
    return log
