"""On a CUDA GPU (skipped without one): a tiny erasure and sampling, and an erasure checkpoint round
trip."""
import pytest
import torch
from conftest import changed, snapshot

from dualerase.models.dit import build_dit, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.runs.checkpoint import load_checkpoint, save_checkpoint
from dualerase.sampling import sample
from dualerase.unlearn import EraseConfig, make_optimizers, unlearn
from dualerase.unlearn.methods import MethodConfig, make_method

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _model():
    torch.manual_seed(0)
    return build_dit(num_classes=5, sample_size=8, in_channels=4, patch_size=2, layers=2, heads=2,
                     head_dim=8).cuda()


def _batches(label, seed):
    gen = torch.Generator().manual_seed(seed)
    while True:
        y = (torch.full((4,), label) if label is not None
             else torch.randint(1, 5, (4,), generator=gen))
        yield torch.randn(4, 4, 8, 8, generator=gen).cuda(), y.cuda()


def _erase(model, steps, optimizers=None, start=0):
    method = make_method(MethodConfig(name="ga"), DiTLoss(make_scheduler()), forget_class=0,
                         num_classes=5)
    cfg = EraseConfig(outer_steps=steps, batch_size=4)
    optimizers = optimizers or make_optimizers(list(model.parameters()), cfg)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        log = unlearn(model, method, _batches(0, 1), _batches(None, 2), cfg, optimizers=optimizers,
                      start_step=start, progress=False)
    return log, optimizers


def test_tiny_erasure_and_sampling_on_cuda():
    model = _model()
    before = snapshot(model)
    log, _ = _erase(model, 3)
    assert len(log) == 3
    assert all(torch.isfinite(torch.tensor(r["forget_loss"])) for r in log)
    assert changed(model, before)
    images = sample(model, make_scheduler(), torch.tensor([0, 1, 2]), num_steps=2, guidance=1.5,
                    seed=0, batch_size=2, progress=False)
    assert images.shape == (3, 4, 8, 8)
    assert torch.isfinite(images).all()


def test_checkpoint_round_trip_on_cuda(tmp_path):
    model = _model()
    _, optimizers = _erase(model, 2)
    folder = save_checkpoint(tmp_path, 2, model, optimizers)
    weights = snapshot(model)
    states = [snapshot(s) for o in optimizers for s in o.state.values()]
    rng = torch.cuda.get_rng_state()
    torch.randn(3, device="cuda")
    fresh = _model()
    fresh_opt = make_optimizers(list(fresh.parameters()), EraseConfig())
    assert load_checkpoint(folder, fresh, fresh_opt) == 2
    assert not changed(fresh, weights)
    loaded = [s for o in fresh_opt for s in o.state.values()]
    assert len(loaded) == len(states)
    for a, b in zip(states, loaded):
        assert all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
    # states follow their params
    assert all(v.is_cuda for s in loaded for k, v in s.items() if k != "step")
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    _erase(fresh, 3, fresh_opt, start=2)  # and it trains on from there
