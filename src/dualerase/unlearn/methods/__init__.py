"""Base methods. Each one says only what differs: its forget loss, its retain loss and its mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt

from dualerase.unlearn.methods.base import Method
from dualerase.unlearn.methods.ga import GradientAscent
from dualerase.unlearn.methods.sa import SelectiveAmnesia
from dualerase.unlearn.methods.salun import SalUn
from dualerase.unlearn.methods.sfron import SFRon


@dataclass
class MethodConfig:
    """The config's `method` group: knobs of the base methods.

    Each method reads the ones it needs (the comment above or beside a field names them); a field
    left at null takes the method's paper's value.
    """

    name: Literal["ga", "sfron", "salun", "sa"] = "sfron"  # one of METHODS
    # samples per Fisher diagonal (SFR-on, SA) or forget images of SalUn's saliency
    grad_samples: Annotated[int, Gt(0)] = 2000
    # SFR-on: samples per vmapped per-sample-gradient pass of its Fisher diagonals (same values up
    # to float rounding; 1: the published batch-1 loop); memory grows with it: that many copies of
    # the model's gradients at once
    fisher_batch: Annotated[int, Gt(0)] = 16
    # loss scale: "mean" or "sum" over pixels; null: the method's paper's
    forget_reduction: Literal["mean", "sum"] | None = None
    # (GA, SFR-on: mean as DiT; SalUn: mean / sum; SA: sum / sum)
    retain_reduction: Literal["mean", "sum"] | None = None
    # the loss's learned-variance term (DiT's VB) in the data losses: on forget and retain losses
    # ("both"), on retain losses only, or on neither (the epsilon MSE of SalUn's and SA's DDPM
    # code); null: the method's (SA: retain, so that its surrogate noise does not train the variance
    # head; the others: both, DiT's loss)
    variance_term: Literal["both", "retain", "none"] | None = None
    gamma: Annotated[float, Ge(0)] = 1.0  # SFR-on: mask threshold on the Fisher ratio F_f / F_r
    top_p: Annotated[float, Gt(0), Le(1)] = 0.5  # SalUn: share of weights the mask keeps
    # SalUn: class forget images are relabelled as (null: (c_f + 1) mod K)
    pseudo_class: int | None = None
    # SalUn: label dropout of the pseudo-class target, drawn apart from the forget batch's
    # (erase.forget_label_dropout); SalUn's code runs its forget step in train mode, 0.1 on both
    pseudo_label_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    # SalUn: forget images per clipped saliency gradient
    saliency_batch: Annotated[int, Gt(0)] = 128
    # SalUn: guidance scale of the saliency loss (DiT's convention; SalUn's w = 2)
    saliency_guidance: Annotated[float, Gt(0)] = 3.0
    replay_weight: Annotated[float, Ge(0)] = 1.0  # SA: gamma, weight of the generative-replay loss
    ewc_lambda: Annotated[float, Ge(0)] = 10.0  # SA: lambda, weight of the EWC penalty
    replay_per_class: Annotated[int, Gt(0)] = 100  # SA: replay samples generated per retained class
    # SA: timesteps summed per Fisher sample (all T, as SA; fewer: stratified, rescaled)
    fisher_timesteps: Annotated[int, Gt(0)] = 1000
    # SA: timesteps per forward/backward pass of that sum (memory, not results)
    fisher_chunk: Annotated[int, Gt(0)] = 100
    # SA: the classes of its Fisher's replay samples: the retained ones, or all (SA's save_fim:
    # every class, the forget class as often as each other one)
    fisher_classes: Literal["retain", "all"] = "retain"
    # SA: label dropout of each timestep of its Fisher loss (save_fim runs in train mode: 0.1)
    fisher_label_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0
    # SA: its Fisher on the replay images mapped to [0, 1], (x + 1) / 2, as save_fim computes it
    # on the images it saved (no rescaling back to the model's [-1, 1]); false: the model's range
    fisher_unit_range: bool = False
    # every loss's timesteps antithetic within its batch (t, then T - 1 - t), as the training step
    # of SalUn's and SA's DDPM code; false: each drawn from its sample's seed
    antithetic_timesteps: bool = False


METHODS: dict[str, type[Method]] = {m.name: m for m in (GradientAscent, SFRon, SalUn,
                                                        SelectiveAmnesia)}


def make_method(cfg: MethodConfig, loss, *, forget_class: int, num_classes: int) -> Method:
    """Instantiate the method named in `cfg` around the model's training objective `loss`.

    Args:
        cfg: the method's knobs; `cfg.name` picks it from `METHODS`.
        loss: the model's training objective (see `Method`).
        forget_class: the class to erase.
        num_classes: K, the number of classes.

    Returns:
        The method, ready for `prepare`.
    """
    return METHODS[cfg.name](cfg, loss, forget_class=forget_class, num_classes=num_classes)


__all__ = ["METHODS", "Method", "MethodConfig", "make_method"]
