"""Base methods. Each one says only what differs: its forget loss, its retain loss and its mask."""
from __future__ import annotations

from dataclasses import dataclass

from erase.methods.base import Method
from erase.methods.ga import GradientAscent
from erase.methods.sa import SelectiveAmnesia
from erase.methods.salun import SalUn
from erase.methods.sfron import SFRon


@dataclass
class MethodConfig:
    """Knobs of the base methods (each method reads the ones it needs)."""

    name: str = "sfron"  # one of METHODS
    grad_samples: int = 2000  # samples per Fisher diagonal (SFR-on, SA) or forget images of SalUn's saliency
    forget_reduction: str | None = None  # loss scale: "mean" or "sum" over pixels; null: the method's paper's
    retain_reduction: str | None = None  # (GA, SFR-on: mean as DiT; SalUn: mean / sum; SA: sum / sum)
    gamma: float = 1.0  # SFR-on: mask threshold on the Fisher ratio F_f / F_r
    top_p: float = 0.5  # SalUn: share of weights the mask keeps
    pseudo_class: int | None = None  # SalUn: class forget images are relabelled as (null: (c_f + 1) mod K)
    saliency_batch: int = 128  # SalUn: forget images per clipped saliency gradient
    saliency_guidance: float = 3.0  # SalUn: guidance scale of the saliency loss (DiT's convention; SalUn's w = 2)
    replay_weight: float = 1.0  # SA: gamma, weight of the generative-replay loss
    ewc_lambda: float = 10.0  # SA: lambda, weight of the EWC penalty
    replay_per_class: int = 100  # SA: replay samples generated per retained class
    fisher_timesteps: int = 1000  # SA: timesteps summed per Fisher sample (all T, as SA; fewer: stratified, rescaled)
    fisher_chunk: int = 100  # SA: timesteps per forward/backward pass of that sum (memory, not results)


METHODS: dict[str, type[Method]] = {m.name: m for m in (GradientAscent, SFRon, SalUn, SelectiveAmnesia)}


def make_method(cfg: MethodConfig, loss, *, forget_class: int, num_classes: int) -> Method:
    """Instantiate the method named in `cfg` around the model's training objective `loss`."""
    return METHODS[cfg.name](cfg, loss, forget_class=forget_class, num_classes=num_classes)


__all__ = ["METHODS", "Method", "MethodConfig", "make_method"]
