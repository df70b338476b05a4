"""Base methods. Each one says only what differs: its forget loss, its retain loss and its mask."""
from __future__ import annotations

from dataclasses import dataclass

from erase.methods.base import Method
from erase.methods.ga import GradientAscent
from erase.methods.sfron import SFRon


@dataclass
class MethodConfig:
    """Knobs of the base methods (each method reads the ones it needs)."""

    name: str = "sfron"  # one of METHODS
    gamma: float = 1.0  # SFR-on mask threshold on the Fisher ratio F_f / F_r
    fisher_samples: int = 2000  # single-sample gradients per Fisher diagonal (public code: 2000, batch 1)


METHODS: dict[str, type[Method]] = {"ga": GradientAscent, "sfron": SFRon}


def make_method(cfg: MethodConfig, loss) -> Method:
    """Instantiate the method named in `cfg` around the model's training loss `loss(model, batch)`."""
    return METHODS[cfg.name](cfg, loss)


__all__ = ["METHODS", "Method", "MethodConfig", "make_method"]
