"""The engine's invariants: Algorithm 1's step counts, the alpha schedule, separate states, masks
that hold."""
import math

import pytest
import torch
from conftest import snapshot

from dualerase.unlearn import EraseConfig, alpha_at, make_optimizers, unlearn
from dualerase.unlearn.dualoptim import DivergenceError


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def _data(seed):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)


def _mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _ascent(model, batch):
    return -_mse(model, batch)


class Fn:
    """A method made of two loss callables."""

    alpha_weights = "forget"

    def __init__(self, forget, retain):
        self.forget_loss, self.retain_loss = forget, retain


ASCENT = Fn(_ascent, _mse)


def _cfg(**kw):
    base = dict(outer_steps=1, forget_steps=1, retain_steps=1, forget_lr=1e-2, retain_lr=1e-2,
                shared_lr=1e-2, alpha_schedule="constant", forget_clip=None)
    base.update(kw)
    return EraseConfig(**base)


def test_step_counts_and_order():
    calls = []

    def forget(model, batch):
        calls.append("f")
        return _ascent(model, batch)

    def retain(model, batch):
        calls.append("r")
        return _mse(model, batch)

    log = unlearn(_model(), Fn(forget, retain), _data(1), _data(2),
                  _cfg(outer_steps=3, forget_steps=2, retain_steps=3), progress=False)
    assert calls == list("ffrrr" * 3)
    assert [r["step"] for r in log] == [0, 1, 2]


def test_alpha_schedule():
    cfg = EraseConfig(outer_steps=10, alpha=2.0, alpha_schedule="cosine")
    assert alpha_at(0, cfg) == pytest.approx(2.0)
    assert alpha_at(5, cfg) == pytest.approx(1.0)
    assert alpha_at(9, cfg) == pytest.approx(2.0 * (1 + math.cos(math.pi * 0.9)) / 2)
    assert alpha_at(7, EraseConfig(outer_steps=10, alpha=2.0, alpha_schedule="constant")) == 2.0
    log = unlearn(_model(), ASCENT, _data(1), _data(2),
                  _cfg(outer_steps=4, alpha_schedule="cosine"), progress=False)
    assert [r["alpha"] for r in log] == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                       (1 + math.cos(3 * math.pi / 4)) / 2])


def test_dual_states_are_disjoint_and_forget_state_sees_only_forget_gradients():
    model = _model()
    cfg = _cfg()
    optim_f, optim_r = make_optimizers(list(model.parameters()), cfg)
    assert optim_f is not optim_r
    # A forget step alone leaves the retain optimizer without any state.
    unlearn(model, ASCENT, _data(1), _data(2), _cfg(retain_steps=0), optimizers=(optim_f, optim_r),
            progress=False)
    assert len(optim_r.state) == 0
    assert len(optim_f.state) == 2
    # After Adam's first step exp_avg = (1 - beta1) * grad: the forget state holds the forget
    # gradient alone.
    model2 = _model()
    x, y = next(_data(1))
    (-((model2(x) - y) ** 2).mean()).backward()
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.allclose(optim_f.state[p]["exp_avg"], 0.1 * p2.grad)
    unlearn(model, ASCENT, _data(3), _data(4), _cfg(forget_steps=0), optimizers=(optim_f, optim_r),
            progress=False)
    for p in model.parameters():
        assert optim_f.state[p]["exp_avg"] is not optim_r.state[p]["exp_avg"]
        assert int(optim_f.state[p]["step"]) == 1
        assert int(optim_r.state[p]["step"]) == 1


def test_shared_mode_uses_one_state():
    model = _model()
    optim_f, optim_r = make_optimizers(list(model.parameters()), _cfg(optimizer="shared"))
    assert optim_f is optim_r
    unlearn(model, ASCENT, _data(1), _data(2), _cfg(optimizer="shared"),
            optimizers=(optim_f, optim_r), progress=False)
    assert all(int(optim_f.state[p]["step"]) == 2 for p in model.parameters())


def _mask(model):
    return {n: (torch.arange(p.numel()).reshape(p.shape) % 2 == 0)
            for n, p in model.named_parameters()}


def _forget_after_retain(mode, weight_decay=0.0):
    """A retain step (building momentum), then a masked forget step; returns (before, after, mask)
    of that step."""
    model = _model()
    mask = _mask(model)
    cfg = _cfg(optimizer=mode, forget_weight_decay=weight_decay, retain_weight_decay=weight_decay)
    opts = make_optimizers(list(model.parameters()), cfg)
    unlearn(model, ASCENT, _data(1), _data(2), _cfg(forget_steps=0), mask=mask, optimizers=opts,
            progress=False)
    before = snapshot(model)
    unlearn(model, ASCENT, _data(3), _data(4), _cfg(retain_steps=0), mask=mask, optimizers=opts,
            progress=False)
    after = dict(model.named_parameters())
    return before, after, mask


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_dual_forget_step_never_moves_masked_coordinates(weight_decay):
    before, after, mask = _forget_after_retain("dual", weight_decay)
    for n, m in mask.items():
        assert torch.equal(after[n].detach()[~m], before[n][~m]), n
        assert not torch.equal(after[n].detach()[m], before[n][m]), n


def test_shared_forget_step_after_retain_step_moves_masked_coordinates():
    """The paper's point: momentum from unmasked retain steps leaks through the mask of a shared
    optimizer."""
    before, after, mask = _forget_after_retain("shared")
    moved = sum(int((after[n].detach()[~m] != before[n][~m]).sum()) for n, m in mask.items())
    assert moved > 0


def test_forget_gradients_are_masked_then_clipped():
    model = _model()
    mask = _mask(model)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = _cfg(forget_optimizer="sgd", forget_lr=1.0, forget_clip=1.0, retain_steps=0)
    log = unlearn(model, Fn(lambda m, b: 1000 * _ascent(m, b), _mse), _data(1), _data(2), cfg,
                  mask=mask, progress=False)
    delta = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    keep = torch.cat([m.flatten() for m in mask.values()])
    assert log[0]["forget_grad_norm"] > 1.0  # logged before clipping
    # SGD step of lr 1 on the clipped gradient
    assert delta.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.all(delta[~keep] == 0)


def test_non_finite_loss_stops_with_the_step_and_side():
    with pytest.raises(DivergenceError, match="forget step at outer step 0"):
        unlearn(_model(), Fn(lambda m, b: _ascent(m, b) * float("nan"), _mse), _data(1), _data(2),
                _cfg(), progress=False)
