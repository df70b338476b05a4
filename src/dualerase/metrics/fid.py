"""FID through torch-fidelity, with a registered feature extractor built on the digits classifier.

Inception weights cannot be had offline and mean nothing at 8x8, so digits FID uses the 64-d
penultimate layer of our digits classifier (`digits-cnn-64`). Numbers on that scale are comparable
only with each other, never with Inception FIDs; every report names the extractor.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
from torch_fidelity.registry import register_feature_extractor

from dualerase.metrics.classifier import FEATURE_DIM, load_classifier, predict, probabilities
from dualerase.storage import file_digest

DIGITS_EXTRACTOR = "digits-cnn"
DIGITS_FEATURE = str(FEATURE_DIM)


class DigitsFeatureExtractor(FeatureExtractorBase):
    """A torch-fidelity extractor: uint8 1x8x8 images -> the digits classifier's 64-d features.

    `feature_extractor_weights_path` (the classifier's safetensors) is required: without it,
    ValueError."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (the digits "
                             "classifier's safetensors)")
        self.net = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        """The one feature layer it provides, "64"."""
        return (DIGITS_FEATURE,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        """The layer every metric reads: the 64-d features."""
        return DIGITS_FEATURE

    @staticmethod
    def can_be_compiled():
        """False: torch-fidelity does not compile it."""
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        """One blank uint8 1x8x8 image."""
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        """The features of uint8 images, as a 1-tuple (torch-fidelity's convention)."""
        return (digits_features(self.net, x),)


def digits_features(net, images: torch.Tensor) -> torch.Tensor:
    """The 64-d features the digits classifier `net` gives uint8 images (what FID reads)."""
    return net.features(images.float() / 127.5 - 1.0)


register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)


class ImageTensors(Dataset):
    """A uint8 (N, C, H, W) tensor as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError("ImageTensors expects uint8 images")
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


# torch-fidelity's default subset size, cut to the smaller set's size when that has fewer images
KID_SUBSET = 1000
KID_SUBSETS = 100  # torch-fidelity's default count of KID subsets
# k of precision and recall's k-nearest-neighbour balls (Kynkaanniemi et al., 2019)
PRC_NEIGHBOURS = 3
FIDELITY = ("fid", "kid", "precision", "recall")
# how KID reads the features (eval.kid_features), as the protocol line states it after "KID "
KID_RULES = {
    "raw": "on the features as they are (torch-fidelity's, kernel (x.y/d + 1)^3)",
    "centred": "on the features centred on the reference's mean and scaled by its RMS spread "
               "(torch-fidelity's estimator, kernel (x.y/d + 1)^3)",
}


def fidelity(input1, input2, size2: int, kid: bool = True, **kwargs) -> dict:
    """FID, KID, precision and recall of samples against a reference, from one feature pass.

    Args:
        input1: the samples: uint8 images, as ImageTensors.
        input2: the reference: ImageTensors or a folder of images.
        size2: how many images `input2` holds.
        kid: compute KID (False: no "kid" key, for a caller that computes its own).
        **kwargs: torch-fidelity's options: the feature extractor, caching.

    Returns:
        {"fid", "kid", "precision", "recall"} as floats.

    KID is the unbiased MMD estimate with the cubic polynomial kernel, averaged over 100 pairs of
    subsets of min(1000, n) images (at the digits protocol's 900 samples every sample subset holds
    them all, the reference subsets of 900 of its 1614 images still differ); precision is the share
    of samples inside the k-NN ball (k = 3) of some reference image, recall the share of reference
    images inside the ball of some sample."""
    subset = min(KID_SUBSET, len(input1), size2)
    m = torch_fidelity.calculate_metrics(input1=input1, input2=input2, fid=True, kid=kid,
                                         prc=True, verbose=False, save_cpu_ram=True,
                                         kid_subset_size=subset, prc_neighborhood=PRC_NEIGHBOURS,
                                         **kwargs)
    return {"fid": float(m[torch_fidelity.KEY_METRIC_FID]),
            **({"kid": float(m[torch_fidelity.KEY_METRIC_KID_MEAN])} if kid else {}),
            "precision": float(m[torch_fidelity.KEY_METRIC_PRECISION]),
            "recall": float(m[torch_fidelity.KEY_METRIC_RECALL])}


def centred_kid(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """KID of (N, d) sample features against reference features, both centred and scaled.

    Both have the reference's mean feature subtracted and are divided by its RMS spread
    s = sqrt(trace(cov)/d), one scale for every dimension; torch-fidelity's estimator then runs on
    them (its subsets, seed and kernel (x.y/d + 1)^3). On the digits features as they are
    (nonnegative, far from the origin) x.y/d is about 34 between two reference images of the
    shipped classifier, so the cubic kernel is nearly linear: it weighs the squared distance of the
    mean features 3 (1 + 34)^2, about 3700, times and the spread of the features little, and KID
    reads in the hundreds near the data. Centred and scaled, x.y/d is 1 for an image with itself
    and about 0 +- 0.4 between two, and the kernel weighs the mean's distance 3 times, the second
    and third moments 3 and 1 times. The map is the same for every model scored against one
    reference; KID no longer changes when every feature is shifted or scaled alike."""
    reference = reference.double()
    mean = reference.mean(0)
    scale = reference.var(0).mean().sqrt().clamp_min(1e-12)
    subset = min(KID_SUBSET, len(samples), len(reference))
    m = kid_features_to_metric((samples.double() - mean) / scale, (reference - mean) / scale,
                               kid_subsets=KID_SUBSETS, kid_subset_size=subset, verbose=False)
    return float(m[KEY_METRIC_KID_MEAN])


class DigitsScorer:
    """The digits protocol, a `Scorer`: the digits classifier's accuracy and FID on its features.

    FID compares samples with all real images of the retained classes; KID reads the same features
    centred and scaled (`centred_kid`) unless `with_kid("raw")`.

    Args:
        classifier: the digits classifier.
        weights_path: its safetensors (the FID feature extractor loads them).
        accuracy: its test-split accuracy, for the protocol.
        images, labels: every real digit and its label."""

    kid_features = "centred"  # eval.kid_features (`with_kid`)

    def __init__(self, classifier, weights_path, accuracy: float, images: torch.Tensor,
                 labels: torch.Tensor):
        self.classifier, self.weights_path, self.accuracy = classifier, weights_path, accuracy
        self.images, self.labels = images, labels

    def with_kid(self, features: str) -> DigitsScorer:
        """A copy whose KID reads `features`: "centred" (`centred_kid`) or "raw" (torch-fidelity's
        on the features as they are)."""
        if features not in KID_RULES:
            raise ValueError(f"KID features {features!r}: one of {', '.join(KID_RULES)}")
        scorer = copy.copy(self)
        scorer.kid_features = features
        return scorer

    @property
    def key(self) -> str:
        """Identifies the classifier (so the feature extractor) the scores depend on, by content."""
        return f"{Path(self.weights_path).name}#{file_digest(self.weights_path)[:12]}"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's top class of each image in [-1, 1]."""
        return predict(self.classifier, images)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K) class probabilities of images in [-1, 1] ("not a digit" included)."""
        return probabilities(self.classifier, images)

    def real_distance(self, images: torch.Tensor, label: int) -> torch.Tensor:
        """L2 distance (pixels in [-1, 1]) from each image to the nearest real image of `label`."""
        real = self.images[self.labels == label].flatten(1).to(images.device, torch.float32)
        return torch.cdist(images.flatten(1).float(), real).min(1).values

    def fidelity(self, samples: torch.Tensor, forget_class: int,
                 classes: list[int] | None = None) -> dict:
        """`fidelity` of uint8 samples against the real images of every class but `forget_class`.

        With `classes`, against the real images of those classes only. KID as `kid_features`
        says: torch-fidelity's on the features as they are ("raw"), or `centred_kid`."""
        kept = (self.labels != forget_class if classes is None
                else torch.isin(self.labels, torch.tensor(classes)))
        reference = ((self.images[kept].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        raw = self.kid_features == "raw"
        scores = fidelity(ImageTensors(samples), ImageTensors(reference), len(reference), kid=raw,
                          cuda=False, batch_size=500, feature_extractor=DIGITS_EXTRACTOR,
                          feature_extractor_weights_path=str(self.weights_path))
        if not raw:
            with torch.no_grad():
                scores["kid"] = centred_kid(digits_features(self.classifier, samples),
                                            digits_features(self.classifier, reference))
        return {k: scores[k] for k in FIDELITY}

    def neighbours(self, forget_class: int, k: int) -> list[int]:
        """The k digits the classifier confuses most with `forget_class`.

        Those it gives the highest mean probability on the real images of `forget_class`."""
        probs = probabilities(self.classifier, self.images[self.labels == forget_class])[:, :10]
        probs[:, forget_class] = -1
        return probs.mean(0).topk(k).indices.tolist()

    def describe(self, forget_class: int) -> dict:
        """The classifier, feature extractor and reference set, as the protocol records them."""
        kept = int((self.labels != forget_class).sum())
        return {
            "classifier": "digits CNN" + (", 10 digits and 'not a digit'"
                                          if self.classifier.head.out_features > 10 else "")
                          + f", {self.accuracy:.3f} accuracy on the held-out split",
            "feature_extractor": f"{DIGITS_EXTRACTOR}-{DIGITS_FEATURE} (digits classifier "
                                 "penultimate layer, torch-fidelity)",
            "reference": f"all {kept} real images of the retained classes",
            "kid": KID_RULES[self.kid_features],
        }
