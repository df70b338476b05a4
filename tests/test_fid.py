"""Our FID (torch-fidelity, the digits classifier's features) against torchmetrics' FrechetInceptionDistance fed the
same images through the same features: two independent implementations of the Frechet distance must agree."""
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from dualerase.config import load_config
from dualerase.metrics.classifier import save_classifier, train_classifier
from dualerase.metrics.fid import DIGITS_EXTRACTOR, DigitsFeatureExtractor, fid
from dualerase.models.digits import load_digits


class Features(torch.nn.Module):
    """torchmetrics' custom feature model: uint8 images -> the same 64-d features torch-fidelity gets."""

    num_features = 64

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, x):
        return self.extractor(x)[0].double()


def test_our_fid_equals_torchmetrics_on_the_same_features(tmp_path):
    x, y = load_digits()
    recipe = load_config("digits", ["classifier.epochs=2"]).classifier
    weights = tmp_path / "clf.safetensors"
    save_classifier(train_classifier(x, y, recipe, progress=False), weights, recipe, 0.0)
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    real, fake = images[y != 3], torch.flip(images[y != 3][:400], dims=[3])  # mirrored digits: a clear distance
    ours = fid(fake, real, feature_extractor=DIGITS_EXTRACTOR, weights_path=str(weights))
    metric = FrechetInceptionDistance(feature=Features(DigitsFeatureExtractor("d", ["64"], str(weights))))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours > 1
    assert metric.compute().item() == pytest.approx(ours, rel=1e-4)
