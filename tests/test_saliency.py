"""Fisher diagonals and the SFR-on mask on hand-computable cases."""
import pytest
import torch

from erase import fisher_diagonal, sfron_mask
from erase.saliency import mask_fraction


def test_sfron_mask_hand_case():
    f_forget = {"w": torch.tensor([1.0, 2.0, 0.0, 4.0, 3.0])}
    f_retain = {"w": torch.tensor([2.0, 1.0, 0.0, 1.0, 1.0])}
    # ratios: 0.5, 2, (0+eps)/(0+eps) = 1, 4, 3
    assert sfron_mask(f_forget, f_retain, gamma=1.0)["w"].tolist() == [False, True, True, True, True]
    assert sfron_mask(f_forget, f_retain, gamma=3.0)["w"].tolist() == [False, False, False, True, True]
    assert mask_fraction(sfron_mask(f_forget, f_retain, gamma=3.0)) == 0.4


def test_fisher_is_mean_squared_per_sample_gradient():
    model = torch.nn.Linear(3, 1, bias=False)
    xs = [torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0]])]

    def loss(m, x):  # d/dw sum(w . x) = x, so the Fisher diagonal is the mean of x**2 over samples
        return m(x).sum()

    fisher = fisher_diagonal(model, loss, iter(xs), num_samples=2, progress=False)
    assert torch.allclose(fisher["weight"], torch.tensor([[5.0, 2.0, 0.5]]))
    assert model.weight.grad is None


def test_a_killed_fisher_loop_continues_from_its_saved_partial_sums(tiny_dit, tmp_path):
    from pipelines.checkpoint import PartialSums
    from pipelines.dit import make_scheduler
    from pipelines.loss import DiTLoss

    x, y = torch.randn(12, 1, 4, 4), torch.arange(12) % 5
    seeds = torch.arange(12)
    samples = lambda: ((x[i:i + 1], y[i:i + 1], seeds[i:i + 1]) for i in range(12))  # noqa: E731
    loss = DiTLoss(make_scheduler())
    whole = fisher_diagonal(tiny_dit, loss, samples(), 12, progress=False)
    calls = {"n": 0}

    def dying(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # killed at the 8th sample: sums after 3 and 6 samples were saved
        return loss(model, batch)

    partial = PartialSums(tmp_path, every=3)
    with pytest.raises(KeyboardInterrupt):
        fisher_diagonal(tiny_dit, dying, samples(), 12, progress=False, partial=partial)
    assert partial.load("fisher")[0] == 6
    counted = {"n": 0}

    def counting(model, batch):
        counted["n"] += 1
        return loss(model, batch)

    resumed = fisher_diagonal(tiny_dit, counting, samples(), 12, progress=False, partial=partial)
    assert counted["n"] == 6  # the first six samples were not redone
    assert all(torch.allclose(whole[n], resumed[n], rtol=1e-6, atol=0) for n in whole)
