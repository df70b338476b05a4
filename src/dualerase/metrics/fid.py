"""FID through torch-fidelity, with a registered feature extractor built on the digits classifier.

Inception weights cannot be had offline and mean nothing at 8x8, so digits FID uses the 64-d
penultimate layer of our digits classifier (`digits-cnn-64`). Numbers on that scale are comparable
only with each other, never with Inception FIDs; every report names the extractor.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
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
        return (self.net.features(x.float() / 127.5 - 1.0),)


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
# k of precision and recall's k-nearest-neighbour balls (Kynkaanniemi et al., 2019)
PRC_NEIGHBOURS = 3
FIDELITY = ("fid", "kid", "precision", "recall")


def fidelity(input1, input2, size2: int, **kwargs) -> dict:
    """FID, KID, precision and recall of samples against a reference, from one feature pass.

    Args:
        input1: the samples: uint8 images, as ImageTensors.
        input2: the reference: ImageTensors or a folder of images.
        size2: how many images `input2` holds.
        **kwargs: torch-fidelity's options: the feature extractor, caching.

    Returns:
        {"fid", "kid", "precision", "recall"} as floats.

    KID is the unbiased MMD estimate with the cubic polynomial kernel, averaged over 100 subsets of
    min(1000, n) images (at 900 samples every subset holds them all, so its spread over subsets is
    0); precision is the share of samples inside the k-NN ball (k = 3) of some reference image,
    recall the share of reference images inside the ball of some sample."""
    subset = min(KID_SUBSET, len(input1), size2)
    m = torch_fidelity.calculate_metrics(input1=input1, input2=input2, fid=True, kid=True,
                                         prc=True, verbose=False, save_cpu_ram=True,
                                         kid_subset_size=subset, prc_neighborhood=PRC_NEIGHBOURS,
                                         **kwargs)
    return {"fid": float(m[torch_fidelity.KEY_METRIC_FID]),
            "kid": float(m[torch_fidelity.KEY_METRIC_KID_MEAN]),
            "precision": float(m[torch_fidelity.KEY_METRIC_PRECISION]),
            "recall": float(m[torch_fidelity.KEY_METRIC_RECALL])}


class DigitsScorer:
    """The digits protocol, a `Scorer`: the digits classifier's accuracy and FID on its features.

    FID compares samples with all real images of the retained classes.

    Args:
        classifier: the digits classifier.
        weights_path: its safetensors (the FID feature extractor loads them).
        accuracy: its test-split accuracy, for the protocol.
        images, labels: every real digit and its label."""

    def __init__(self, classifier, weights_path, accuracy: float, images: torch.Tensor,
                 labels: torch.Tensor):
        self.classifier, self.weights_path, self.accuracy = classifier, weights_path, accuracy
        self.images, self.labels = images, labels

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

        With `classes`, against the real images of those classes only."""
        kept = (self.labels != forget_class if classes is None
                else torch.isin(self.labels, torch.tensor(classes)))
        reference = ((self.images[kept].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return fidelity(ImageTensors(samples), ImageTensors(reference), len(reference), cuda=False,
                        batch_size=500, feature_extractor=DIGITS_EXTRACTOR,
                        feature_extractor_weights_path=str(self.weights_path))

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
        }
