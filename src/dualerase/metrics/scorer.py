"""What a run asks of a scorer of samples (the digits scorer in metrics/fid.py, the published ImageNet evaluation in
metrics/imagenet.py)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


class Scorer(Protocol):
    """Scores the samples of a model: class probabilities (for forget accuracy, the forget class's probability and
    the entropy), FID, KID, precision and recall of retained-class samples, and the protocol's description of both."""

    @property
    def key(self) -> str:
        """Identifies everything the scores depend on besides the samples (weights by content, reference set)."""

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K) class probabilities of images in [-1, 1]."""

    def fidelity(self, samples: torch.Tensor, forget_class: int, classes: list[int] | None = None) -> dict:
        """{"fid", "kid", "precision", "recall"} of uint8 samples of the retained classes against the reference set
        without `forget_class` (`metrics.fid.fidelity`); with `classes`, of samples and references of those only."""

    def neighbours(self, forget_class: int, k: int) -> list[int]:
        """The k classes nearest `forget_class` by the classifier (robustness.neighbours)."""

    def describe(self, forget_class: int) -> dict:
        """The classifier, feature extractor and reference set, as the protocol records them."""


@runtime_checkable
class RealDistance(Protocol):
    """A scorer that also knows the real images of each class (the digits scorer): eval.fa_real_distance needs it."""

    def real_distance(self, images: torch.Tensor, label: int) -> torch.Tensor:
        """L2 distance (pixels in [-1, 1]) from each image to the nearest real image of class `label`."""
