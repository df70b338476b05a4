"""KID: torch-fidelity's (what metrics/fid.py computes) against the unbiased MMD^2 of Binkowski et
al. (2018) transcribed from its definition and against torchmetrics' KernelInceptionDistance, on
the same features; the digits protocol's KID on centred features, that it moves with FID where the
raw one does not, and how it is printed (x1e3). Also what `erase-class --score-only` prints."""
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import TINY, Features, own_cache
from torch_fidelity.metric_kid import kid_features_to_metric

from dualerase.bench import bench
from dualerase.cli import erase_class
from dualerase.config import load_config
from dualerase.metrics.classifier import load_classifier
from dualerase.metrics.fid import (
    DIGITS_EXTRACTOR,
    KID_RULES,
    DigitsFeatureExtractor,
    DigitsScorer,
    ImageTensors,
    centred_kid,
    digits_features,
    fidelity,
)
from dualerase.metrics.imagenet import ImageNetScorer
from dualerase.metrics.scorer import KidFeatures, kid_scorer
from dualerase.models.digits import load_digits, prepare_digits_classifier
from dualerase.reports.summary import robustness_lines, summary


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al. (2018), eq. 2 with k(x, y) = (x.y/d + 1)^3: the mean of k over pairs of
    distinct samples of each set, minus twice its mean over all cross pairs."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    def within(a):
        off = ~np.eye(len(a), dtype=bool)
        return k(a, a)[off].mean()

    return float(within(x) + within(y) - 2 * k(x, y).mean())


def kid_by_definition(x: torch.Tensor, y: torch.Tensor, size: int, subsets: int = 100) -> float:
    """The mean unbiased MMD^2 over `subsets` pairs of subsets of `size`, drawn without replacement
    as torch-fidelity draws them (numpy RandomState(2020), the samples' subset first)."""
    x, y = x.double().numpy(), y.double().numpy()
    rng = np.random.RandomState(2020)
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), size, replace=False)]
        b = y[rng.choice(len(y), size, replace=False)]
        values.append(unbiased_mmd2(a, b))
    return float(np.mean(values))




@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(shipped classifier's weights, uint8 digits, labels, the digits scorer on them)."""
    mp = pytest.MonkeyPatch()  # module scope: the autouse cache fixture has not run yet
    from conftest import shared_cache
    mp.setenv("DUALERASE_HOME", str(shared_cache(tmp_path_factory)))
    weights, accuracy = prepare_digits_classifier(load_config("digits").classifier, progress=False)
    mp.undo()
    x, y = load_digits()
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return weights, images, y, DigitsScorer(load_classifier(weights), weights, accuracy, x, y)


def _noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = sigma * torch.randn(images.shape, generator=gen)
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def test_torch_fidelity_kid_is_the_unbiased_mmd_of_its_definition(digits):
    """Unequal sets (300 samples, 700 reference images): 100 subsets of 300 each, the reference's
    differing from subset to subset."""
    weights, images, y, _ = digits
    others = images[y != 3]
    real, fake = others[:700], _noisy(others[700:1000], 24)
    ours = fidelity(ImageTensors(fake), ImageTensors(real), len(real), cuda=False, batch_size=500,
                    feature_extractor=DIGITS_EXTRACTOR,
                    feature_extractor_weights_path=str(weights))["kid"]
    features = Features(DigitsFeatureExtractor("d", ["64"], str(weights)))
    with torch.no_grad():
        ff, fr = features(fake), features(real)
    assert ours > 1  # noisy digits against clean ones: a distance, not 0
    assert ours == pytest.approx(kid_by_definition(ff, fr, 300), rel=1e-4)

    from torchmetrics.image.kid import KernelInceptionDistance

    torch.manual_seed(0)  # torchmetrics draws its own subsets: its mean agrees within their spread
    metric = KernelInceptionDistance(feature=features, subsets=100, subset_size=300)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    mean, spread = (v.item() for v in metric.compute())
    assert spread > 0.01 * mean  # the subsets do differ, so the check below is not trivial
    # two means of 100 subsets each: their difference has a std of about spread * sqrt(2) / 10
    assert abs(mean - ours) < 4 * spread * math.sqrt(2) / 10


def test_the_digits_scorer_kid_reads_centred_or_raw_features(digits):
    weights, images, y, scorer = digits
    samples = _noisy(images[y != 3][:400], 16, seed=1)
    reference = images[y != 3]
    raw, centred = scorer.with_kid("raw").fidelity(samples, 3), scorer.fidelity(samples, 3)
    assert scorer.kid_features == "centred"  # with_kid gave a copy
    assert kid_scorer(scorer, load_config("digits").eval).kid_features == "centred"
    assert kid_scorer(scorer, load_config("digits", ["eval.kid_features=raw"]).eval) \
        .kid_features == "raw"
    direct = fidelity(ImageTensors(samples), ImageTensors(reference), len(reference), cuda=False,
                      batch_size=500, feature_extractor=DIGITS_EXTRACTOR,
                      feature_extractor_weights_path=str(weights))
    assert raw == direct  # raw: torch-fidelity's KID, untouched
    assert {k: v for k, v in centred.items() if k != "kid"} == \
        {k: v for k, v in raw.items() if k != "kid"}  # only KID changes
    with torch.no_grad():
        fs, fr = (digits_features(scorer.classifier, u).double() for u in (samples, reference))
    mean, scale = fr.mean(0), fr.var(0).mean().sqrt()
    expected = kid_by_definition((fs - mean) / scale, (fr - mean) / scale, 400)
    assert centred["kid"] == pytest.approx(expected, rel=1e-6)
    assert raw["kid"] > 100 * centred["kid"] > 0
    assert scorer.describe(3)["kid"] == KID_RULES["centred"]
    assert scorer.with_kid("raw").describe(3)["kid"] == KID_RULES["raw"]
    with pytest.raises(ValueError, match="KID features 'rbf'"):
        scorer.with_kid("rbf")


def test_the_imagenet_scorer_keeps_torch_fidelity_kid():
    assert issubclass(DigitsScorer, KidFeatures)
    assert not issubclass(ImageNetScorer, KidFeatures)
    other = object()
    assert kid_scorer(other, load_config("digits").eval) is other


def test_centred_kid_ignores_a_common_shift_and_scale_of_the_features():
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(200, 64, generator=gen, dtype=torch.float64) * 8
    samples = torch.rand(100, 64, generator=gen, dtype=torch.float64) * 8 * 1.2 + 0.3
    moved = centred_kid(samples * 3 + 5, ref * 3 + 5)
    assert moved == pytest.approx(centred_kid(samples, ref), rel=1e-9)
    assert centred_kid(samples, ref) > 0
    raw = [kid_features_to_metric(a, b, kid_subsets=100, kid_subset_size=100, verbose=False)
           ["kernel_inception_distance_mean"] for a, b in ((samples, ref),
                                                            (samples * 3 + 5, ref * 3 + 5))]
    assert raw[1] > 50 * raw[0]  # the raw kernel is not: the norms set its scale


def test_centred_kid_moves_with_fid_where_raw_kid_does_not(digits):
    """Diversity lost (a few real digits per class repeated, the mean feature nearly kept) against
    pixel noise: FID weighs the lost spread, the raw cubic kernel hardly (it is nearly the mean
    features' distance), the centred one as FID does. And a ladder of noise: both KIDs rise with
    FID."""
    _, images, y, scorer = digits
    reference = images[y != 3]
    with torch.no_grad():
        fr = digits_features(scorer.classifier, reference)

    def scores(samples):  # FID, centred KID, raw KID (torch-fidelity's on the same features)
        q = scorer.fidelity(samples, 3)
        with torch.no_grad():
            fs = digits_features(scorer.classifier, samples)
        raw = kid_features_to_metric(fs, fr, kid_subsets=100, verbose=False,
                                     kid_subset_size=min(1000, len(fs)))
        return q["fid"], q["kid"], raw["kernel_inception_distance_mean"]

    gen = torch.Generator().manual_seed(2)
    few = torch.cat([images[y == c][torch.randperm(int((y == c).sum()), generator=gen)[:3]]
                     [torch.arange(60) % 3] for c in range(10) if c != 3])
    held = images[y != 3][::3]
    ladder = [scores(_noisy(held, sigma)) for sigma in (0, 24, 48, 96)]
    for i in range(3):  # FID, centred KID, raw KID: each rises with the noise
        assert [s[i] for s in ladder] == sorted(s[i] for s in ladder), ladder
    collapsed = scores(few)
    noisy = next(s for s in ladder if s[0] > collapsed[0] / 2)
    assert noisy[0] < collapsed[0]  # FID: the few repeated digits are worse
    assert noisy[1] < collapsed[1]  # centred KID agrees
    assert noisy[2] > collapsed[2]  # raw KID reads against FID


def test_kid_is_printed_x1e3_where_the_protocol_names_its_features(tiny_run):
    code, out = tiny_run
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["kid"] == KID_RULES["centred"]
    text = summary(m)
    row = next(line for line in text.splitlines() if line.startswith("KID"))
    assert row.split()[:2] == ["KID", "x1e3"]
    assert row.split()[-2:] == [f"{1e3 * m[s]['kid']:.3f}" for s in ("before", "after")]
    assert f"KID {KID_RULES['centred']}" in text.splitlines()[-1]  # the protocol line
    quality = bench.markdown(bench.aggregate([m]), [m], "fid-bench").split("Sample quality")[1]
    quality = quality.splitlines()
    assert "| FID | KID x1e3 | precision | recall | gap KID x1e3 |" in quality[2]
    assert f"| {1e3 * m['after']['kid']:.2f} |" in quality[4]
    old = {**m, "protocol": {k: v for k, v in m["protocol"].items() if k != "kid"}}
    quality = bench.markdown(bench.aggregate([old]), [old], "fid-bench").split("Sample quality")
    quality = quality[1].splitlines()
    assert "| FID | KID | precision | recall | gap KID |" in quality[2]  # records as written
    assert f"| {m['after']['kid']:.4f} |" in quality[4]


def test_score_only_prints_its_robustness_and_why_fid_is_na(tmp_path, monkeypatch, capsys):
    # scores of a patched scorer must not land in the shared cache; the trained models may
    own_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(
        DigitsScorer, "fidelity", lambda self, samples, forget_class, classes=None: {
            "fid": float("inf") if classes is None else 7.5, "kid": 0.0125, "precision": 0.5,
            "recall": 0.5})
    robust = ["--set", "robustness.samples=4", "--set", "robustness.guidances=[1.0, 4.0]",
              "--set", "robustness.unconditional=true", "--set", "robustness.neighbours=2"]
    assert erase_class.main(["3", "--score-only", *TINY, *robust]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(ln for ln in lines if ln.startswith("FID (")).split()[-1] == "n/a"
    assert any(ln.startswith("FID: not finite (torch-fidelity gave inf)") for ln in lines)
    assert next(ln for ln in lines if ln.startswith("KID x1e3")).split()[-1] == "12.500"
    guided = [ln for ln in lines if ln.startswith("forget accuracy at guidance ")]
    assert [ln.split(":")[0] for ln in guided] == ["forget accuracy at guidance 1",
                                                   "forget accuracy at guidance 4"]
    assert all(re.fullmatch(r"[^:]+: [01]\.\d{3}", ln) for ln in guided), guided  # no "->"
    assert any(re.fullmatch(r"unconditional samples called the class: [01]\.\d{3}", ln)
               for ln in lines)
    near = next(ln for ln in lines if ln.startswith("nearest classes"))
    assert re.fullmatch(r"nearest classes \d, \d: retain accuracy [01]\.\d{3}, FID 7\.50", near)
    assert lines[-1].startswith("protocol: ")


def test_a_neighbour_fid_that_is_na_says_why():
    after = {"neighbour_classes": [5, 8], "neighbour_retain_accuracy": 0.9, "neighbour_fid": None,
             "neighbour_fid_error": "FID of a few classes needs a reference folder"}
    assert robustness_lines(None, after) == [
        "nearest classes 5, 8: retain accuracy 0.900, FID n/a (FID of a few classes needs a "
        "reference folder)"]
    before = {**after, "neighbour_retain_accuracy": 0.95}
    assert robustness_lines(before, after)[0].startswith(
        "nearest classes 5, 8: retain accuracy 0.950 -> 0.900, FID n/a -> n/a (FID of ")
