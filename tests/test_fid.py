"""Our FID (torch-fidelity, the digits classifier's features) against torchmetrics'
FrechetInceptionDistance fed the same images through the same features: two independent
implementations of the Frechet distance must agree; KID against torchmetrics'
KernelInceptionDistance, precision and recall against a transcription of their definition."""
import pytest
import torch
from conftest import Features
from torchmetrics.image.fid import FrechetInceptionDistance

from dualerase.config import load_config
from dualerase.metrics.classifier import save_classifier, train_classifier
from dualerase.metrics.fid import DIGITS_EXTRACTOR, DigitsFeatureExtractor, ImageTensors, fidelity
from dualerase.models.digits import load_digits


def _weights(tmp_path):
    x, y = load_digits()
    recipe = load_config("digits", ["classifier.epochs=2"]).classifier
    weights = tmp_path / "clf.safetensors"
    save_classifier(train_classifier(x, y, recipe, progress=False), weights, recipe, 0.0)
    return weights, ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), y


def test_our_fid_equals_torchmetrics_on_the_same_features(tmp_path):
    weights, images, y = _weights(tmp_path)
    real, fake = images[y != 3], images[y == 3]  # 3s against every other digit: a clear distance
    ours = fidelity(ImageTensors(fake), ImageTensors(real), len(real), cuda=False, batch_size=500,
                    feature_extractor=DIGITS_EXTRACTOR,
                    feature_extractor_weights_path=str(weights))["fid"]
    metric = FrechetInceptionDistance(
        feature=Features(DigitsFeatureExtractor("d", ["64"], str(weights))))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours > 1
    assert metric.compute().item() == pytest.approx(ours, rel=1e-4)


def test_kid_precision_and_recall_against_independent_versions(tmp_path):
    """KID: torchmetrics' KernelInceptionDistance (cubic polynomial kernel, one subset holding every
    image). Precision and recall (Kynkaanniemi et al., 2019), transcribed from their definition:
    each set's k-NN radius per image (k = 3); precision is the share of generated images inside some
    real image's ball, recall the converse."""
    from torchmetrics.image.kid import KernelInceptionDistance

    weights, images, y = _weights(tmp_path)
    real = images[y == 1][:150]
    # 32 real 1s, 118 flipped 7s
    fake = torch.cat([images[y == 1][150:], torch.flip(images[y == 7][:118], dims=[2])])
    ours = fidelity(ImageTensors(fake), ImageTensors(real), len(real), cuda=False, batch_size=500,
                    feature_extractor=DIGITS_EXTRACTOR, feature_extractor_weights_path=str(weights))
    features = Features(DigitsFeatureExtractor("d", ["64"], str(weights)))
    kid = KernelInceptionDistance(feature=features, subsets=1, subset_size=len(real))
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert ours["kid"] == pytest.approx(kid.compute()[0].item(), rel=1e-4, abs=1e-7)

    fr, ff = features(real), features(fake)

    def radius(f):  # distance to the 3rd nearest other image of the same set
        return torch.cdist(f, f).sort(dim=1).values[:, 3]

    precision = (torch.cdist(ff, fr) <= radius(fr)[None, :]).any(1).double().mean().item()
    recall = (torch.cdist(fr, ff) <= radius(ff)[None, :]).any(1).double().mean().item()
    assert 0 < precision < 1 and 0 < recall < 1  # a mixed set: neither score is trivially 0 or 1
    assert ours["precision"] == pytest.approx(precision, abs=1e-6)
    assert ours["recall"] == pytest.approx(recall, abs=1e-6)
