"""Membership inference: the loss attack and SimA find the images a model was trained on, and find
nothing where the model saw neither set; the efficacy reading and the intervals."""
import pytest
import torch

from dualerase.metrics.membership import attack, efficacy, loss_scores, sima_scores
from dualerase.models.digits import load_digits
from dualerase.models.dit import build_dit, make_scheduler
from dualerase.models.loss import DiTLoss


def _dit(seed=0):
    torch.manual_seed(seed)
    return build_dit(num_classes=10, sample_size=8, in_channels=1, patch_size=2, layers=2,
                     heads=2, head_dim=16)


@pytest.fixture(scope="module")
def overfit():
    """A tiny DiT trained hard on 8 images of digit 0: (model, its 8 images, 8 other 0s)."""
    x, y = load_digits()
    zeros = x[y == 0]
    members, others = zeros[:8], zeros[8:16]
    model, loss = _dit(), DiTLoss(make_scheduler())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    torch.manual_seed(1)
    for _ in range(600):
        opt.zero_grad()
        loss(model, (members.repeat(8, 1, 1, 1), torch.zeros(64, dtype=torch.long))).backward()
        opt.step()
    return model.eval(), members, others


def _scores(kind, model, x):
    labels = torch.zeros(len(x), dtype=torch.long)
    if kind == "loss":
        return loss_scores(model, x, labels, make_scheduler().alphas_cumprod)
    return sima_scores(model, x, labels)


@pytest.mark.parametrize("kind", ("loss", "sima"))
def test_an_attack_finds_the_images_an_overfit_model_trained_on(overfit, kind):
    model, members, others = overfit
    result = attack(_scores(kind, model, members), _scores(kind, model, others))
    assert result["auc"] > 0.9, result
    assert result["members"] == result["nonmembers"] == 8
    low, high = result["auc_95"]
    assert low <= result["auc"] <= high


@pytest.mark.parametrize("kind", ("loss", "sima"))
def test_an_attack_finds_nothing_where_the_model_saw_neither_set(overfit, kind):
    model, _, _ = overfit  # trained on 8 zeros only: these 1s and 7s are alike to it
    x, y = load_digits()
    a, b = x[y == 1][:60], x[y == 7][:60]
    mixed = torch.cat([a, b])[torch.randperm(120, generator=torch.Generator().manual_seed(0))]
    result = attack(_scores(kind, model, mixed[:60]), _scores(kind, model, mixed[60:]))
    assert 0.35 < result["auc"] < 0.65, result
    assert result["auc_95"][0] < 0.5 < result["auc_95"][1]


def test_the_loss_attack_uses_the_same_noise_for_every_model():
    x, y = load_digits()
    one, two = _dit(0), _dit(0)
    assert torch.equal(_scores("loss", one, x[:5]), _scores("loss", two, x[:5]))
    assert not torch.equal(_scores("loss", one, x[:5]), _scores("loss", _dit(1), x[:5]))


def test_efficacy_counts_forget_images_below_the_retained_classes_threshold():
    members, nonmembers = torch.tensor([5.0, 6.0, 7.0]), torch.tensor([1.0, 2.0, 3.0])
    # the threshold separates at 5: 4 and below read as non-members
    assert efficacy(torch.tensor([0.0, 4.0, 5.0, 9.0]), members, nonmembers) == 0.5
    assert efficacy(torch.tensor([8.0, 9.0]), members, nonmembers) == 0.0


def test_tpr_at_one_percent_fpr_of_a_perfect_and_a_useless_detector():
    perfect = attack(torch.arange(100.0, 200.0), torch.arange(0.0, 100.0), bootstraps=5)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_1fpr"] == 1.0
    useless = attack(torch.zeros(100), torch.zeros(100), bootstraps=5)
    assert useless["auc"] == 0.5 and useless["tpr_at_1fpr"] == 0.0
