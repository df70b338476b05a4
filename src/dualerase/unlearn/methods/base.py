"""The interface every base method fills in."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch


class DataSource(Protocol):
    """What a pipeline offers a method to build its data from, all in the model's input space."""

    real: Any  # forget_x, forget_y, retain_x, retain_y: the real images of the forget class and of the others

    def surrogate(self, like: torch.Tensor) -> torch.Tensor:
        """As many uniform-noise images in [-1, 1] as `like` holds."""

    def replay(self, labels: torch.Tensor) -> torch.Tensor:
        """Samples the original model generates for `labels`."""


class Method:
    """A base method: the forget loss (minimised on forget batches), the retain loss, and what it prepares first.

    `loss` is the model's own training objective, given by the pipeline: `loss(model, batch)` is the training loss
    (for a diffusion model the denoising loss) and `loss.match(model, batch, labels)` the distance between the
    prediction for the batch's labels and the frozen prediction for `labels` at the same noisy input. A method combines
    them and never needs to know the model's kind.

    `data(source)` says what the method is fed (real images by default; `DataSource` lists what else a pipeline
    offers). `alpha_weights` names the loss alpha_t weights, and `joint`
    marks methods whose original update is one step on forget + retain loss (used with a shared optimizer);
    `clip_then_mask` clips the whole gradient before masking it (SalUn's order) instead of after.
    `forget_reduction` / `retain_reduction` are the loss scales of the method's own paper ("mean" over pixels, as
    DiT trains, or "sum" over pixels, as the DDPM code of SalUn and SA), so that a published alpha or lambda means
    what it meant there; `method.forget_reduction` / `method.retain_reduction` override them. `variance_term` says
    which data losses keep the loss's learned-variance term (`method.variance_term` overrides it). `published` holds the
    method's own published values of other config keys (dotted key -> value), applied under presets and --set.
    """

    name = "base"
    alpha_weights = "forget"
    joint = False
    clip_then_mask = False
    forget_reduction = "mean"
    retain_reduction = "mean"
    variance_term = "both"
    published: dict = {}

    def __init__(self, cfg, loss, *, forget_class: int, num_classes: int):
        self.cfg = cfg
        self.loss = loss
        self.forget_class = forget_class
        self.num_classes = num_classes
        self.forget_reduction, self.retain_reduction = self.reductions(cfg).values()
        term = cfg.variance_term or self.variance_term  # which data losses keep the model's learned-variance term
        self.forget_variance, self.retain_variance = term == "both", term in ("both", "retain")

    @classmethod
    def reductions(cls, cfg) -> dict[str, str]:
        """{"forget": ..., "retain": ...}: the loss scales in use, the config's or else the method's paper's."""
        return {"forget": cfg.forget_reduction or cls.forget_reduction,
                "retain": cfg.retain_reduction or cls.retain_reduction}

    def data(self, source: DataSource) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(forget images, forget labels, retain images, retain labels) the method trains on: the real ones."""
        return source.real.forget_x, source.real.forget_y, source.real.retain_x, source.real.retain_y

    def forget_loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def retain_loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """Keep the other classes: the plain training loss on retain data."""
        return self.loss(model, batch, reduction=self.retain_reduction, variance=self.retain_variance)

    def prepare(self, model: torch.nn.Module, forget: Callable[[int], Iterator], retain: Callable[[int], Iterator],
                progress: bool = True, partial=None) -> dict[str, torch.Tensor] | None:
        """Work done once before unlearning, on the original model: `forget(b)` and `retain(b)` give endless batches of
        b samples of the data the method is fed. Returns which coordinates forget steps may change (name -> bool
        tensor), or None for all. `partial` keeps running sums of long gradient loops so that a killed preparation
        continues (see saliency)."""
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors `prepare` computed besides the mask, saved so that a resumed run need not compute them again."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], original: torch.nn.Module) -> None:
        """Restore what `state` returned; `original` is the model before unlearning."""
