"""Fisher diagonals and the SFR-on mask on hand-computable cases."""
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
