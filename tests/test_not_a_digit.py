"""The digits classifier's "not a digit" class: the seeded junk it learns it from, the perturbations
it learns digits through, and the validation of the forget-accuracy rule built on it."""
import torch

from dualerase.metrics.not_a_digit import (
    JUNK_KINDS,
    MAKERS,
    NOT_A_DIGIT,
    affine,
    blurred,
    junk,
    overlaid,
    shifted,
    thickened,
    validation_sets,
)


def test_junk_is_seeded_in_range_and_of_every_kind():
    a, b = junk(500, torch.Generator().manual_seed(1)), junk(500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, junk(500, torch.Generator().manual_seed(2)))
    assert a.min() >= -1 and a.max() <= 1
    for kind in JUNK_KINDS:
        images = MAKERS[kind](50, torch.Generator().manual_seed(0))
        assert images.shape == (50, 8, 8) and images.min() >= -1 and images.max() <= 1
    stripes = MAKERS["stripes"](50, torch.Generator().manual_seed(0))
    assert (stripes.flatten(1).std(1) > 0).all()  # two levels, never a blank


def test_perturbations_against_a_direct_transcription():
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    # a whole-pixel shift is a roll whose wrapped edge becomes background (-1)
    right = torch.roll(x, 1, dims=3)
    right[..., 0] = -1
    assert torch.allclose(shifted(x, 1, 0), right, atol=1e-6)
    up = torch.roll(x, -1, dims=2)
    up[..., -1, :] = -1
    assert torch.allclose(shifted(x, 0, -1), up, atol=1e-6)
    # no rotation, scale 1, no shift: the image itself; a quarter turn: the transposed-and-flipped
    # image
    same = affine(x, torch.zeros(3), torch.ones(3), torch.zeros(3, 2))
    assert torch.allclose(same, x, atol=1e-6)
    turned = affine(x, torch.full((3,), 90.0), torch.ones(3), torch.zeros(3, 2))
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5) or \
        torch.allclose(turned, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    # blur keeps a blank blank; thickening never thins; an overlay at weight 0 and 1 is either image
    blank = -torch.ones(1, 1, 8, 8)
    assert torch.allclose(blurred(blank), blank) and (thickened(x) >= x).all()
    j = junk(3, torch.Generator().manual_seed(0))
    assert torch.equal(overlaid(x, j, 0.0), x) and torch.equal(overlaid(x, j, 1.0), j)


def test_validation_sets_are_fixed():
    x, y = torch.rand(20, 1, 8, 8) * 2 - 1, torch.arange(20) % 10
    a, b = validation_sets(x, y), validation_sets(x, y)
    assert list(a) == list(b) and all(torch.equal(a[k][0], b[k][0]) for k in a)
    assert (a["pure junk"][1] == NOT_A_DIGIT).all() and len(a["shifted 1 pixel (4 ways)"][0]) == 80


def test_the_default_classifier_sees_digits_through_perturbations_and_junk_as_no_digit():
    """The validation the rule was adopted on: on every fixed set, real and perturbed held-out
    digits are counted as their digit (top class of 11) at >= 0.9, pure junk as any digit at
    <= 0.02."""
    from dualerase.config import load_config
    from dualerase.metrics.classifier import load_classifier, probabilities
    from dualerase.models.digits import load_digits, prepare_digits_classifier, train_test_split

    net = load_classifier(prepare_digits_classifier(load_config("digits").classifier,
                                                    progress=False)[0])
    x, y = load_digits()
    _, test = train_test_split(y)
    for name, (images, labels) in validation_sets(x[test], y[test]).items():
        top = probabilities(net, images).argmax(1)
        if name == "pure junk":
            assert (top != NOT_A_DIGIT).float().mean().item() <= 0.02, name
        else:
            assert (top == labels).float().mean().item() >= 0.9, name


def test_verdict_rows_frame_each_sample_in_its_verdicts_colour():
    from dualerase.reports.summary import VERDICT_COLORS, verdict_rows

    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    picture = verdict_rows(
        [("digit 3, seed 0", images, ["counted", "another class", "not a digit"])], scale=4)
    size = 8 * 4 + 4  # each image and its 2-pixel frame
    corners = [picture.getpixel((picture.width - (3 - i) * (size + 2), 20)) for i in range(3)]
    assert corners == [VERDICT_COLORS[v] for v in ("counted", "another class", "not a digit")]
