"""The interface every base method fills in."""
from __future__ import annotations

from typing import Callable, Iterator

import torch

Loss = Callable[[torch.nn.Module, object], torch.Tensor]


class Method:
    """A base method: the forget loss (minimised on forget batches), the retain loss, and an optional mask.

    `loss(model, batch)` is the model's own training loss (for a diffusion model: the denoising loss), given by the
    pipeline; a method combines it and never needs to know the model's kind.
    """

    name = "base"

    def __init__(self, cfg, loss: Loss):
        self.cfg = cfg
        self.loss = loss

    def forget_loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def retain_loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """Keep the other classes: the plain training loss on retain data."""
        return self.loss(model, batch)

    def mask(self, model: torch.nn.Module, forget_samples: Iterator, retain_samples: Iterator, progress: bool = True):
        """Which coordinates may change in forget steps (name -> bool tensor), or None for all of them."""
        return None
