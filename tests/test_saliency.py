"""Fisher diagonals and the SFR-on mask on hand-computable cases."""
import copy

import pytest
import torch

from dualerase.unlearn import fisher_diagonal, sfron_mask
from dualerase.unlearn.saliency import mask_fraction


def test_sfron_mask_hand_case():
    f_forget = {"w": torch.tensor([1.0, 2.0, 0.0, 4.0, 3.0])}
    f_retain = {"w": torch.tensor([2.0, 1.0, 0.0, 1.0, 1.0])}
    # ratios: 0.5, 2, (0+eps)/(0+eps) = 1, 4, 3
    assert sfron_mask(f_forget, f_retain, gamma=1.0)["w"].tolist() == \
        [False, True, True, True, True]
    assert sfron_mask(f_forget, f_retain, gamma=3.0)["w"].tolist() == \
        [False, False, False, True, True]
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
    from dualerase.models.dit import make_scheduler
    from dualerase.models.loss import DiTLoss
    from dualerase.runs.checkpoint import PartialSums

    x, y = torch.randn(12, 1, 4, 4), torch.arange(12) % 5
    seeds = torch.arange(12)
    samples = lambda: ((x[i:i + 1], y[i:i + 1], seeds[i:i + 1]) for i in range(12))  # noqa: E731
    loss = DiTLoss(make_scheduler())
    whole = fisher_diagonal(tiny_dit, loss, samples(), 12, progress=False)
    calls = {"n": 0}

    def dying(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            # killed at the 8th sample: sums after 3 and 6 samples were saved
            raise KeyboardInterrupt
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


# --- The vmapped way (chunk > 1) against the published batch-1 loop ---


def _seeded(n, channels=1, size=4, classes=5):
    """A function giving the same stream of n seeded single-sample batches each call, and a count of
    those drawn."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, size, size, generator=gen) * 2 - 1
    y, seeds = (torch.randint(0, classes, (n,), generator=gen),
                torch.randint(0, 2**62, (n,), generator=gen))
    drawn = {"n": 0}

    def stream():
        for i in range(n):
            drawn["n"] += 1
            yield x[i:i + 1], y[i:i + 1], seeds[i:i + 1]
    return stream, drawn


def _assert_close(a, b, rtol=1e-4):
    """Every Fisher tensor equal up to float rounding, relative to the largest value (key biases get
    float noise)."""
    scale = max(float(f.abs().max()) for f in a.values())
    for n in a:
        assert torch.allclose(a[n], b[n], rtol=rtol, atol=rtol * 1e-2 * scale), n


@pytest.mark.parametrize("chunk", [4, 16])  # 4 does not divide 10; 16 is more than all of them
# tied: one embedder shared by every block, as DiT-XL/2
@pytest.mark.parametrize("tied", [False, True])
def test_vmapped_fisher_equals_the_batch_1_loop(tiny_dit, chunk, tied):
    from dualerase.models.dit import make_scheduler, tie_embedders
    from dualerase.models.loss import DiTLoss

    assert tiny_dit.config.out_channels == 2  # learned sigma: the loss has the VB term
    if tied:
        tie_embedders(tiny_dit)
    stream, drawn = _seeded(10)
    loss = DiTLoss(make_scheduler())
    loop = fisher_diagonal(tiny_dit, loss, stream(), 10, progress=False)
    tiny_dit.train()
    before = {n: p for n, p in tiny_dit.named_parameters(remove_duplicate=False)}
    vmapped = fisher_diagonal(tiny_dit, loss, stream(), 10, progress=False, chunk=chunk)
    # the stream read once each, the model measured in eval mode
    assert drawn["n"] == 20 and not tiny_dit.training
    assert all(p.grad is None for p in tiny_dit.parameters())
    # every parameter is its own object again (torch's functional_call leaves tied modules holding
    # stand-ins)
    assert all(p is before[n] for n, p in tiny_dit.named_parameters(remove_duplicate=False))
    copy.deepcopy(tiny_dit)
    assert vmapped.keys() == loop.keys()
    _assert_close(loop, vmapped)


def test_a_killed_vmapped_fisher_continues_from_its_saved_partial_sums(tiny_dit, tmp_path):
    from dualerase.models.dit import make_scheduler
    from dualerase.models.loss import DiTLoss
    from dualerase.runs.checkpoint import PartialSums

    stream, _ = _seeded(12)
    loss = DiTLoss(make_scheduler())
    whole = fisher_diagonal(tiny_dit, loss, stream(), 12, progress=False, chunk=4)

    class Counting(DiTLoss):  # the batched way draws each sample once: count them, die at `die_at`
        def __init__(self, die_at=None):
            super().__init__(make_scheduler())
            self.n, self.die_at = 0, die_at

        def draws(self, model, batch):
            self.n += 1
            if self.n == self.die_at:
                raise KeyboardInterrupt
            return super().draws(model, batch)

    # killed in the third chunk of 4 (sums saved at chunk ends, after 4 and 8 samples), or in the
    # loop at sample 8
    for chunk, die_at, saved in [(4, 10, 8), (1, 8, 6)]:
        partial = PartialSums(tmp_path / str(chunk), every=3)
        with pytest.raises(KeyboardInterrupt):
            fisher_diagonal(tiny_dit, Counting(die_at), stream(), 12, progress=False,
                            partial=partial, chunk=chunk)
        assert partial.load("fisher")[0] == saved
        counting = Counting()
        resumed = fisher_diagonal(tiny_dit, counting, stream(), 12, progress=False, partial=partial,
                                  chunk=4)
        # the samples done were not redone (after the loop's 6: chunks 6-9, 10-11)
        assert counting.n == 12 - saved
        _assert_close(whole, resumed, rtol=1e-6 if chunk == 4 else 1e-4)


def test_processes_share_the_stream_alike_whatever_the_chunk(tiny_dit, monkeypatch):
    import dualerase.unlearn.saliency as saliency
    from dualerase.models.dit import make_scheduler
    from dualerase.models.loss import DiTLoss

    stream, drawn = _seeded(10)
    loss = DiTLoss(make_scheduler())
    whole = fisher_diagonal(tiny_dit, loss, stream(), 10, progress=False)
    # each simulated process keeps its own sums
    monkeypatch.setattr(saliency.dist, "all_reduce", lambda t: None)
    for chunk in (1, 2, 4):
        shares = []
        for rank in range(3):
            monkeypatch.setattr(saliency, "world", lambda r=rank: (r, 3))
            drawn["n"] = 0
            shares.append(fisher_diagonal(tiny_dit, loss, stream(), 10, progress=False,
                                          chunk=chunk))
            assert drawn["n"] == 10  # every process reads the whole stream
        _assert_close(whole, {n: sum(s[n] for s in shares) for n in whole})


def test_the_vmapped_way_runs_under_bf16_autocast(tiny_dit):
    from dualerase.models.dit import make_scheduler
    from dualerase.models.loss import DiTLoss

    stream, _ = _seeded(8)
    loss = DiTLoss(make_scheduler())
    exact = fisher_diagonal(tiny_dit, loss, stream(), 8, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vmapped = fisher_diagonal(tiny_dit, loss, stream(), 8, progress=False, chunk=4)
    assert all(f.dtype == torch.float32 for f in vmapped.values())
    assert any(not torch.allclose(exact[n], vmapped[n], rtol=1e-4) for n in exact)  # bf16 did run
    # bf16's rounding (the loop under autocast is as far from float32)
    _assert_close(exact, vmapped, rtol=0.2)


def test_other_losses_and_checkpointed_models_fall_back_to_the_loop(tiny_dit):
    from dualerase.models.dit import make_scheduler
    from dualerase.models.loss import DiTLoss

    model = torch.nn.Linear(3, 1, bias=False)
    xs = [torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0]])]
    fisher = fisher_diagonal(model, lambda m, x: m(x).sum(), iter(xs), num_samples=2,
                             progress=False, chunk=2)
    # a plain callable: no draws, the loop
    assert torch.equal(fisher["weight"], torch.tensor([[5.0, 2.0, 0.5]]))
    stream, _ = _seeded(4)
    loss = DiTLoss(make_scheduler())
    tiny_dit.enable_gradient_checkpointing()  # torch.func can't go through activation checkpointing
    loop = fisher_diagonal(tiny_dit, loss, stream(), 4, progress=False)
    assert all(torch.equal(loop[n], f)
               for n, f in fisher_diagonal(tiny_dit, loss, stream(), 4, progress=False,
                                           chunk=4).items())
