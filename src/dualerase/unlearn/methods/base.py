"""The interface every base method fills in."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch


class DataSource(Protocol):
    """What a pipeline offers a method to build its data from, all in the model's input space."""

    # forget_x, forget_y, retain_x, retain_y: the real images of the forget class and of the others
    real: Any

    def surrogate(self, like: torch.Tensor) -> torch.Tensor:
        """As many uniform-noise images in [-1, 1] as `like` holds."""

    def replay(self, labels: torch.Tensor) -> torch.Tensor:
        """Samples the original model generates for `labels`."""


class Method:
    """A base method: its forget loss, its retain loss, and what it prepares first.

    `loss` is the model's own training objective, given by the pipeline: `loss(model, batch)` is the
    training loss (for a diffusion model the denoising loss) and `loss.match(model, batch, labels)`
    the distance between the prediction for the batch's labels and the frozen prediction for
    `labels` at the same noisy input. A method combines them and never needs to know what kind of
    model it erases from. A subclass says what differs in the class attributes below.

    Attributes:
        name: its key in `METHODS`.
        alpha_weights: which loss alpha_t weights, "forget" or "retain".
        joint: its original update is one step on forget + retain loss (what a shared optimizer
            runs).
        clip_then_mask: clip the whole gradient before masking it (SalUn's order), not after.
        forget_reduction, retain_reduction: its paper's loss scales, "mean" over pixels (as DiT
            trains) or "sum" (as the DDPM code of SalUn and SA), so that a published alpha or lambda
            means what it meant there; the config's `method.forget_reduction` /
            `method.retain_reduction` override them.
        variance_term: which data losses keep the learned-variance term, "both", "retain" or
            "none"; `method.variance_term` overrides it.
        published: its paper's values of other config keys (dotted key -> value), applied under
            presets and --set.

    Args:
        cfg: the method's knobs (`MethodConfig`).
        loss: the model's training objective, as above.
        forget_class: the class to erase.
        num_classes: K, the number of classes (the null class is K).
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
        # which data losses keep the model's learned-variance term
        term = cfg.variance_term or self.variance_term
        self.forget_variance, self.retain_variance = term == "both", term in ("both", "retain")

    @classmethod
    def reductions(cls, cfg) -> dict[str, str]:
        """The loss scales in use: the config's, or else the method's paper's.

        Returns:
            {"forget": "mean" or "sum", "retain": "mean" or "sum"}.
        """
        return {"forget": cfg.forget_reduction or cls.forget_reduction,
                "retain": cfg.retain_reduction or cls.retain_reduction}

    def data(
        self, source: DataSource
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the method trains on; by default the real images.

        Args:
            source: what the pipeline offers (`DataSource`).

        Returns:
            (forget images, forget labels, retain images, retain labels).
        """
        return (source.real.forget_x, source.real.forget_y, source.real.retain_x,
                source.real.retain_y)

    def forget_loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """The loss a forget step minimises on one forget batch.

        Args:
            model: the model being erased.
            batch: a batch of the forget data `data` gives (images, labels, noise seeds).

        Returns:
            A scalar tensor.

        Raises:
            NotImplementedError: every method defines its own.
        """
        raise NotImplementedError

    def retain_loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """The loss a retain step minimises: by default the plain training loss on retain data.

        Args:
            model: the model being erased.
            batch: a batch of the retain data `data` gives.

        Returns:
            A scalar tensor.
        """
        return self.loss(model, batch, reduction=self.retain_reduction,
                         variance=self.retain_variance)

    def prepare(self, model: torch.nn.Module, forget: Callable[[int], Iterator],
                retain: Callable[[int], Iterator], progress: bool = True,
                partial=None) -> dict[str, torch.Tensor] | None:
        """Work done once before unlearning, on the original model (by default none).

        Args:
            model: the original model.
            forget: `forget(b)` gives endless batches of b samples of the forget data it is fed.
            retain: the same for the retain data.
            progress: show progress bars.
            partial: keeps running sums of long gradient loops so that a killed preparation
                continues (see saliency).

        Returns:
            The coordinates masked steps may change (parameter name -> bool tensor), or None for
            all.
        """
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors `prepare` computed besides the mask, saved for a resumed run to reuse."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], original: torch.nn.Module) -> None:
        """Restore what `state` returned; `original` is the model before unlearning."""
