"""What a run asks of a scorer of samples, and the forget-accuracy rule that reads its output.

The scorers are the digits scorer in metrics/fid.py and the published ImageNet evaluation in
metrics/imagenet.py."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


class Scorer(Protocol):
    """Scores the samples of a model: class probabilities, fidelity, and the protocol's description.

    The probabilities give forget accuracy, the forget class's probability and the entropy; the
    fidelity is FID, KID, precision and recall of retained-class samples."""

    @property
    def key(self) -> str:
        """Names all the scores depend on but the samples (weights by content, reference set)."""

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K) class probabilities of images in [-1, 1]."""

    def fidelity(self, samples: torch.Tensor, forget_class: int,
                 classes: list[int] | None = None) -> dict:
        """{"fid", "kid", "precision", "recall"} of uint8 samples of the retained classes.

        They are measured against the reference set without `forget_class`
        (`metrics.fid.fidelity`); with `classes`, of samples and references of those only."""

    def neighbours(self, forget_class: int, k: int) -> list[int]:
        """The k classes nearest `forget_class` by the classifier (robustness.neighbours)."""

    def describe(self, forget_class: int) -> dict:
        """The classifier, feature extractor and reference set, as the protocol records them."""


@runtime_checkable
class RealDistance(Protocol):
    """A scorer that also knows the real images of each class (the digits scorer).

    eval.fa_real_distance needs it."""

    def real_distance(self, images: torch.Tensor, label: int) -> torch.Tensor:
        """L2 distance (pixels in [-1, 1]) from each image to the nearest real image of `label`."""


@runtime_checkable
class KidFeatures(Protocol):
    """A scorer whose KID can read its features centred or as they are (the digits scorer).

    eval.kid_features picks; other scorers compute torch-fidelity's KID on their features."""

    def with_kid(self, features: str) -> Scorer:
        """A copy of the scorer whose KID reads `features` ("centred" or "raw")."""


def kid_scorer(scorer: Scorer, eval_cfg) -> Scorer:
    """`scorer` with the KID of the config's `eval` group `eval_cfg` (eval.kid_features).

    A scorer without the choice is returned as it is."""
    return scorer.with_kid(eval_cfg.kid_features) if isinstance(scorer, KidFeatures) else scorer


def counts_as_forget(probs: torch.Tensor, images: torch.Tensor, forget_class: int,
                     eval_cfg, scorer: Scorer) -> torch.Tensor:
    """Which samples count as the forget class in forget accuracy (FA).

    A sample counts when the classifier's top class is the forget class (of all its classes, "not a
    digit" included for the digits classifier); opt-in, also with at least eval.fa_min_confidence
    of probability, and within eval.fa_real_distance of a real image of it
    (`RealDistance.real_distance`; the config refuses the distance for a scorer without it).

    Args:
        probs: (N, K) class probabilities of the samples.
        images: the samples, in [-1, 1].
        forget_class: the erased class.
        eval_cfg: the config's `eval` group.
        scorer: the scorer that gave `probs`.

    Returns:
        (N,) bool tensor."""
    top = probs.max(1)
    counted = top.indices == forget_class
    if eval_cfg.fa_min_confidence is not None:
        counted &= top.values >= eval_cfg.fa_min_confidence
    if eval_cfg.fa_real_distance is not None:
        assert isinstance(scorer, RealDistance), ("config validation refuses eval.fa_real_distance "
                                                  "for this scorer")
        counted &= scorer.real_distance(images, forget_class) <= eval_cfg.fa_real_distance
    return counted


def fa_rule(eval_cfg) -> str:
    """The FA rule of the config's `eval` group `eval_cfg` in words, for the protocol."""
    rule = ("top class" if eval_cfg.fa_min_confidence is None
            else f"top class with probability >= {eval_cfg.fa_min_confidence:g}")
    return rule + ("" if eval_cfg.fa_real_distance is None
                   else f", within L2 distance {eval_cfg.fa_real_distance:g} (pixels in "
                   "[-1, 1]) of a real image of the class")
