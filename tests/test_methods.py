"""What each base method's loss and mask compute, on tiny hand-checkable cases."""
import torch
from conftest import changed, snapshot
from diffusers.models.embeddings import LabelEmbedding
from hypothesis import given, settings
from hypothesis import strategies as st

from dualerase.models.dit import make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.unlearn import EraseConfig, make_optimizers, unlearn
from dualerase.unlearn.methods import METHODS, MethodConfig, make_method
from dualerase.unlearn.saliency import gradient_sum, mask_fraction, top_fraction_mask


def _method(name, model=None, **cfg):
    return make_method(MethodConfig(name=name, **cfg), DiTLoss(make_scheduler()), forget_class=1,
                       num_classes=5)


def _batch(label=1, n=4):
    return torch.rand(n, 1, 4, 4) * 2 - 1, torch.full((n,), label)


def test_every_method_is_registered():
    assert set(METHODS) == {"ga", "sfron", "salun", "sa"}


def test_ga_is_the_negated_training_loss(tiny_dit):
    ga = _method("ga")
    batch = _batch()
    torch.manual_seed(3)
    a = ga.forget_loss(tiny_dit, batch)
    torch.manual_seed(3)
    assert torch.equal(a, -ga.loss(tiny_dit, batch))


def test_salun_loss_is_zero_when_pseudo_and_forget_predictions_agree(tiny_dit):
    salun = _method("salun")
    assert salun.pseudo_labels(torch.tensor([1, 1])).tolist() == [2, 2]  # (c_f + 1) mod K
    assert _method("salun", pseudo_class=4).pseudo_labels(torch.tensor([1])).tolist() == [4]
    assert salun.forget_loss(tiny_dit, _batch()).item() > 0
    with torch.no_grad():
        for module in tiny_dit.modules():
            if isinstance(module, LabelEmbedding):
                module.embedding_table.weight[2] = module.embedding_table.weight[1]
    assert salun.forget_loss(tiny_dit, _batch()).item() == 0.0


def test_salun_mask_keeps_the_top_share_of_gradient_magnitude():
    scores = {"a": torch.tensor([0.1, 5.0, 0.3]), "b": torch.tensor([[2.0, 0.0], [4.0, 1.0]])}
    mask = top_fraction_mask(scores, 3 / 7)
    assert mask["a"].tolist() == [False, True, False]
    assert mask["b"].tolist() == [[True, False], [True, False]]
    model = torch.nn.Linear(2, 1, bias=False)
    xs = iter([torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]])])
    total = gradient_sum(model, lambda m, x: m(x).sum(), xs, 2, progress=False)
    assert torch.equal(total["weight"], torch.tensor([[4.0, -1.0]]))  # the signed sum, before |.|


def test_sfron_fisher_diagonals_are_the_loops_when_vmapped(tiny_dit):
    def stream(label):  # endless seeded single samples, as the pipeline's batches(x, y, 1, seed)
        gen = torch.Generator().manual_seed(label)
        while True:
            x, seed = (torch.rand(1, 1, 4, 4, generator=gen) * 2 - 1,
                       torch.randint(0, 99, (1,), generator=gen))
            yield x, torch.tensor([label]), seed

    looped, vmapped = (_method("sfron", grad_samples=6, fisher_batch=1),
                       _method("sfron", grad_samples=6))
    # the default: vmapped (more than the 6 samples: one chunk)
    assert vmapped.cfg.fisher_batch == 16
    for method in (looped, vmapped):
        method.prepare(tiny_dit, lambda b: stream(1), lambda b: stream(2), progress=False)
    for a, b in [(looped.fisher_forget, vmapped.fisher_forget),
                 (looped.fisher_retain, vmapped.fisher_retain)]:
        scale = max(float(f.max()) for f in a.values())
        assert all(torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-6 * scale) for n in a)


def test_sa_penalty_is_zero_at_the_original_weights_and_quadratic_away(tiny_dit):
    sa = _method("sa", grad_samples=3)
    replay = iter([_batch(label=c, n=1) for c in (0, 2, 3)])
    # a stratified subsample of the 1000 timesteps keeps this test fast
    sa.cfg.fisher_timesteps = 20
    assert sa.prepare(tiny_dit, lambda b: iter([]), lambda b: replay, progress=False) is None
    assert sa.ewc_penalty(tiny_dit).item() == 0.0
    name, param = next((n, p) for n, p in tiny_dit.named_parameters()
                       if sa.fisher[n].abs().sum() > 0)
    with torch.no_grad():
        param.add_(0.5)
    assert torch.isclose(sa.ewc_penalty(tiny_dit), (sa.fisher[name] * 0.25).sum())
    sa.cfg.ewc_lambda, sa.cfg.replay_weight = 10.0, 0.0
    assert torch.isclose(sa.retain_loss(tiny_dit, _batch(0)), 10 * sa.ewc_penalty(tiny_dit))


class _Sum:
    """A method on a linear model whose retain loss is the output sum."""

    def __init__(self, alpha_weights, joint=False):
        self.alpha_weights, self.joint = alpha_weights, joint

    def forget_loss(self, model, batch):
        return -model(batch).sum()

    def retain_loss(self, model, batch):
        return model(batch).sum()


def _ones():
    while True:
        yield torch.ones(1, 2)


def test_alpha_can_weight_the_retain_loss():
    model = torch.nn.Linear(2, 1)
    before = snapshot(model)
    cfg = EraseConfig(outer_steps=1, alpha=0.0, alpha_schedule="constant", forget_steps=0,
                      retain_optimizer="sgd", retain_lr=1.0)
    unlearn(model, _Sum("retain"), _ones(), _ones(), cfg, progress=False)
    assert not changed(model, before)  # alpha 0 on retain: no move
    unlearn(model, _Sum("forget"), _ones(), _ones(), cfg, progress=False)
    assert changed(model, before)


def test_joint_methods_take_one_shared_step_per_outer_step():
    model = torch.nn.Linear(2, 1)
    shared = EraseConfig(outer_steps=3, optimizer="shared")
    opts = make_optimizers(list(model.parameters()), shared)
    log = unlearn(model, _Sum("retain", joint=True), _ones(), _ones(), shared, optimizers=opts,
                  progress=False)
    assert int(opts[0].state[model.weight]["step"]) == 3
    assert log[0]["joint_grad_norm"] is not None
    dual = EraseConfig(outer_steps=3, optimizer="dual")
    opts = make_optimizers(list(model.parameters()), dual)
    unlearn(model, _Sum("retain", joint=True), _ones(), _ones(), dual, optimizers=opts,
            progress=False)
    assert int(opts[0].state[model.weight]["step"]) == 3
    assert int(opts[1].state[model.weight]["step"]) == 3


def test_salun_mask_keeps_exactly_the_share_asked_when_scores_tie():
    # Most gradients of a DiT are exactly zero for a single class: a threshold test would keep every
    # tied zero.
    mask = top_fraction_mask({"a": torch.tensor([0.0, 0.0, 0.0, 1.0])}, 0.5)
    # the top score, then the first tie by rank
    assert mask["a"].tolist() == [True, False, False, True]
    mask = top_fraction_mask({"a": torch.zeros(3), "b": torch.tensor([[0.0, 2.0], [0.0, 0.0]])},
                             3 / 7)
    assert mask["a"].tolist() == [True, True, False]
    assert mask["b"].tolist() == [[False, True], [False, False]]
    assert mask_fraction(top_fraction_mask({"a": torch.ones(10)}, 0.3)) == 0.3


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 3), min_size=1, max_size=40), split=st.integers(0, 40),
       fraction=st.floats(0.01, 1.0))
def test_salun_mask_count_is_exact_and_keeps_the_largest(values, split, fraction):
    flat = torch.tensor(values, dtype=torch.float32)
    split = min(split, len(values))
    mask = top_fraction_mask({"a": flat[:split], "b": flat[split:]}, fraction)
    kept = torch.cat([mask["a"], mask["b"]])
    assert int(kept.sum()) == max(1, int(fraction * len(values)))  # as SalUn: int(top_p * N)
    if not kept.all():
        assert flat[kept].min() >= flat[~kept].max()


def test_salun_pseudo_label_dropout_is_drawn_per_sample_seed_apart_from_the_noise():
    """method.pseudo_label_dropout drops SalUn's target labels to the null class (K) by a draw of
    each sample's own (the same seeds give the same drops), about the share asked; 0 (the default)
    drops none."""
    labels, seeds = torch.full((400,), 1), torch.arange(400) * 7919
    dropped = _method("salun", pseudo_label_dropout=0.3).pseudo_labels(labels, seeds)
    assert set(dropped.tolist()) == {2, 5} and 0.22 < (dropped == 5).float().mean() < 0.38
    assert torch.equal(dropped,
                       _method("salun", pseudo_label_dropout=0.3).pseudo_labels(labels, seeds))
    assert (_method("salun").pseudo_labels(labels, seeds) == 2).all()
