"""SalUn and Selective Amnesia as their authors ran them: each loss, mask and Fisher checked against
a small transcription written from the published description (DDPM code of SalUn and SA:
pixel-summed losses, clipped saliency gradients under guidance, a Fisher summed over every
timestep)."""
import math

import pytest
import torch
from conftest import changed, snapshot

from dualerase.config import load_config
from dualerase.models.dit import build_dit, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.unlearn import EraseConfig, unlearn
from dualerase.unlearn.methods import MethodConfig, make_method

T = 1000


def _alphas_bar():
    """DiT's linear schedule, written out: betas 1e-4 .. 0.02 over 1000 steps, cumulative product of
    1 - beta."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def _noise_of(seed, shape):
    """The timestep and noise our loss draws for a sample with this seed (the data, not the formula
    under test)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, T, (1,), generator=gen)[0], torch.randn(shape, generator=gen)


@pytest.fixture
def fixed_dit():
    """A tiny DiT without learned sigma, as the DDPM models of SalUn and SA (their loss has no VLB
    term)."""
    torch.manual_seed(0)
    return build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2,
                     head_dim=8, learn_sigma=False)


def _batch(label, n, seed0=0):
    gen = torch.Generator().manual_seed(100 + seed0)
    return (torch.rand(n, 1, 4, 4, generator=gen) * 2 - 1, torch.full((n,), label),
            torch.arange(seed0, seed0 + n))


def _noised(x0, seeds, t_override=None):
    ab = _alphas_bar()
    ts, es = zip(*(_noise_of(s, x0.shape[1:]) for s in seeds))
    t, e = torch.stack(ts), torch.stack(es)
    if t_override is not None:
        t = t_override
    a = ab[t].view(-1, 1, 1, 1)
    return t, e, a.sqrt() * x0 + (1 - a).sqrt() * e


def _salun(**cfg):
    return make_method(MethodConfig(name="salun", **cfg), DiTLoss(make_scheduler()), forget_class=1,
                       num_classes=5)


def test_salun_retain_loss_is_summed_over_pixels(fixed_dit):
    x0, y, seeds = _batch(label=3, n=4)
    t, e, xt = _noised(x0, seeds)
    original = (e - fixed_dit(xt, t, class_labels=y).sample).square().sum(dim=(1, 2, 3)).mean(0)
    ours = _salun().retain_loss(fixed_dit, (x0, y, seeds))
    assert torch.allclose(ours, original, rtol=1e-5)
    mean_reduced = _salun(retain_reduction="mean").retain_loss(fixed_dit, (x0, y, seeds))
    # 1x4x4 pixels: the published alpha is 16x stronger
    assert torch.allclose(ours, 16 * mean_reduced, rtol=1e-5)


def _transcribed_joint_salun(model, mask, forget_batches, retain_batches, lr, alpha):
    """SalUn's joint step: forget MSE (mean) + alpha * pixel-summed retain loss, one Adam, clip to
    1, then mask."""
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=lr, weight_decay=0.0)
    for (xf, yf, sf), (xr, yr, sr) in zip(forget_batches, retain_batches):
        t, e, xr_t = _noised(xr, sr)
        retain = (e - model(xr_t, t, class_labels=yr).sample).square().sum(dim=(1, 2, 3)).mean(0)
        t, _, xf_t = _noised(xf, sf)
        output = model(xf_t, t, class_labels=yf).sample
        pseudo = model(xf_t, t, class_labels=torch.full_like(yf, 2)).sample.detach()
        loss = torch.nn.functional.mse_loss(output, pseudo) + alpha * retain
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        for name, p in params.items():
            p.grad *= mask[name]
        opt.step()


def test_salun_joint_step_matches_the_published_update(fixed_dit):
    import copy

    original, untouched = copy.deepcopy(fixed_dit), snapshot(fixed_dit)
    gen = torch.Generator().manual_seed(1)
    mask = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in fixed_dit.named_parameters()}
    # attention key biases have zero gradient but for float noise, which Adam would amplify
    for name in mask:
        if name.endswith("to_k.bias"):
            mask[name][:] = False
    forget = [_batch(1, 4, seed0=10 * i) for i in range(3)]
    retain = [(_batch(3, 4, seed0=500 + 10 * i)) for i in range(3)]
    cfg = load_config("digits", ["method.name=salun", "erase.optimizer=shared",
                                 "erase.outer_steps=3", "erase.shared_lr=1e-3"])
    assert cfg.erase.alpha == 1e-3
    assert cfg.erase.alpha_schedule == "constant"
    assert cfg.erase.forget_clip == 1.0
    method = make_method(cfg.method, DiTLoss(make_scheduler()), forget_class=1, num_classes=5)
    erase_cfg = EraseConfig(**{**cfg.erase.__dict__, "retain_optimizer": "adam"})
    unlearn(fixed_dit, method, iter(forget), iter(retain), erase_cfg, mask=mask, progress=False)
    _transcribed_joint_salun(original, mask, forget, retain, lr=1e-3, alpha=1e-3)
    for (name, a), b in zip(fixed_dit.named_parameters(), original.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert changed(fixed_dit, untouched)


def test_salun_alternating_retain_steps_are_masked_too(fixed_dit):
    base = snapshot(fixed_dit)
    cfg = load_config("digits", ["method.name=salun", "erase.outer_steps=4"])
    assert cfg.erase.mask_retain is True  # SalUn's published value, applied without a preset entry
    assert load_config("digits",
                       ["method.name=salun", "erase.mask_retain=false"]).erase.mask_retain is False
    assert load_config("digits", ["method.name=sfron"]).erase.mask_retain is False
    method = make_method(cfg.method, DiTLoss(make_scheduler()), forget_class=1, num_classes=5)
    gen = torch.Generator().manual_seed(2)
    mask = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in fixed_dit.named_parameters()}
    forget = iter([_batch(1, 4, seed0=10 * i) for i in range(4)])
    retain = iter([_batch(3, 4, seed0=500 + 10 * i) for i in range(4)])
    unlearn(fixed_dit, method, forget, retain, cfg.erase, mask=mask, progress=False)
    for name, p in fixed_dit.named_parameters():
        # neither side moved a masked-out weight
        assert torch.equal(p[~mask[name]], base[name][~mask[name]]), name
    assert changed(fixed_dit, base)


def test_salun_saliency_mask_matches_the_published_generate_mask(fixed_dit):
    # two batches of four, guidance 3 (SalUn's w = 2)
    salun = _salun(grad_samples=8, saliency_batch=4)
    batches = [_batch(1, 4, seed0=0), _batch(1, 4, seed0=4)]
    it = iter(batches)
    mask = salun.prepare(fixed_dit, lambda size: it, None, progress=False)
    # Transcription: eval mode; antithetic timesteps; guided eps = (1 + w) cond - w uncond;
    # pixel-summed loss; each batch's gradient clipped to norm 1; summed; |.|; the top half by rank.
    fixed_dit.eval()
    params = dict(fixed_dit.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    w = 2.0
    for x0, y, seeds in batches:
        t, _, _ = _noised(x0, seeds)
        half = len(t) // 2 + 1
        t = torch.cat([t[:half], T - t[:len(t) - half] - 1])
        _, e, xt = _noised(x0, seeds, t_override=t)
        cond = fixed_dit(xt, t, class_labels=y).sample
        uncond = fixed_dit(xt, t, class_labels=torch.full_like(y, 5)).sample
        loss = (e - ((1 + w) * cond - w * uncond)).square().sum(dim=(1, 2, 3)).mean(0)
        fixed_dit.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        for n, p in params.items():
            total[n] += p.grad
    flat = torch.cat([g.abs().flatten() for g in total.values()])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(-flat)[:int(len(flat) * 0.5)]] = True
    ours = torch.cat([m.flatten() for m in mask.values()])
    assert ours.sum() == keep.sum()
    assert torch.equal(ours, keep)


def _sa(**cfg):
    return make_method(MethodConfig(name="sa", **cfg), DiTLoss(make_scheduler()), forget_class=1,
                       num_classes=5)


def test_sa_fisher_is_the_squared_gradient_summed_over_every_timestep(fixed_dit):
    """In float64: what is left (6e-6 relative) is our loss's noise-schedule tables, kept in
    float32."""
    fixed_dit = fixed_dit.double()
    samples = [(x.double(), y, s)
               for x, y, s in (_batch(c, 1, seed0=s) for c, s in ((0, 7), (3, 8)))]
    sa = _sa(grad_samples=2, fisher_chunk=400)
    it = iter(samples)
    sa.prepare(fixed_dit, None, lambda size: it, progress=False)
    # Transcription of SA's save_fim: per sample, sum over t = 0..T-1 of the pixel-summed epsilon
    # loss (fresh noise per t), one gradient, squared; averaged over samples.
    ab = _alphas_bar().double()
    params = dict(fixed_dit.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for x0, y, seed in samples:
        e = torch.randn(
            (T, 1, 4, 4), generator=torch.Generator().manual_seed(int(seed[0]))).double()
        t = torch.arange(T)
        a = ab.view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * e
        loss = (e - fixed_dit(xt, t, class_labels=y.expand(T)).sample).square().sum()
        fixed_dit.zero_grad()
        loss.backward()
        for n, p in params.items():
            fisher[n] += p.grad ** 2 / len(samples)
    # (key biases have zero gradient but for float noise)
    scale = max(f.max() for f in fisher.values())
    for n in params:
        assert torch.allclose(sa.fisher[n], fisher[n], rtol=2e-5, atol=1e-8 * scale), n
    # The scale the published lambda = 10 was set against: the old one-timestep, pixel-mean Fisher
    # was ~1e8 smaller.
    from dualerase.unlearn.saliency import fisher_diagonal

    it = iter(samples)
    mean_one_t = fisher_diagonal(fixed_dit, DiTLoss(make_scheduler()), it, 2, progress=False)
    ratio = sum(f.sum() for f in sa.fisher.values()) / sum(f.sum() for f in mean_one_t.values())
    assert ratio > 1e5


def test_sa_timestep_subsample_is_stratified_and_rescaled(fixed_dit):
    loss = DiTLoss(make_scheduler())
    sample = _batch(0, 1, seed0=3)
    full = sum(part.item() for part in loss.timestep_sum(fixed_dit, sample, T, 500))
    estimates = [sum(part.item() for part in
                     loss.timestep_sum(fixed_dit, (*sample[:2], torch.tensor([s])), 50, 50))
                 for s in range(40)]
    mean = sum(estimates) / len(estimates)
    # the rescaled 50-timestep sums estimate the 1000-timestep sum
    assert math.isclose(mean, full, rel_tol=0.1)


def test_sa_published_values_and_joint_step():
    cfg = load_config("digits", ["method.name=sa"])
    assert cfg.erase.retain_clip == 1.0
    assert cfg.erase.retain_label_dropout == 0.0
    assert cfg.erase.alpha_schedule == "constant"
    assert load_config("digits", ["method.name=sa", "erase.retain_clip=5"]).erase.retain_clip == 5.0
    sa = _sa()
    assert sa.joint
    assert sa.forget_reduction == "sum"
    assert sa.retain_reduction == "sum"
    assert _sa(forget_reduction="mean").forget_reduction == "mean"


@pytest.fixture
def learned_dit():
    """A tiny DiT with learned sigma, as DiT-XL/2 and the digits DiT: its loss has the VB term."""
    torch.manual_seed(0)
    return build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2,
                     head_dim=8)


def _eps_sum(model, x0, y, seeds):
    """SA's and SalUn's DDPM loss, written from the description: the epsilon MSE summed over pixels,
    batch mean."""
    t, e, xt = _noised(x0, seeds)
    eps = model(xt, t, class_labels=y).sample[:, :1]
    return ((eps - e) ** 2).flatten(1).sum(1).mean()


def test_sa_keeps_the_variance_term_on_replay_only_by_default(learned_dit):
    """On a learned-sigma DiT, SA's surrogate loss is its DDPM code's epsilon loss (the noise
    surrogate does not train the variance head); the replay loss is DiT's, VB term included;
    method.variance_term chooses otherwise."""
    x0, y, seeds = _batch(label=1, n=4)
    full = DiTLoss(make_scheduler())(learned_dit, (x0, y, seeds), reduction="sum")
    eps_only = _eps_sum(learned_dit, x0, y, seeds)
    assert full > eps_only * 1.001  # the VB term is there to be dropped

    def sa_of(**cfg):
        sa = _sa(ewc_lambda=0.0, **cfg)
        sa.fisher = {n: torch.zeros_like(p) for n, p in learned_dit.named_parameters()}
        sa.anchor = {n: p.detach().clone() for n, p in learned_dit.named_parameters()}
        return sa

    sa = sa_of()
    assert torch.allclose(sa.forget_loss(learned_dit, (x0, y, seeds)), eps_only, rtol=1e-5)
    assert torch.allclose(sa.retain_loss(learned_dit, (x0, y, seeds)), full, rtol=1e-5)
    both, none = sa_of(variance_term="both"), sa_of(variance_term="none")
    assert torch.allclose(both.forget_loss(learned_dit, (x0, y, seeds)), full, rtol=1e-5)
    assert torch.allclose(none.retain_loss(learned_dit, (x0, y, seeds)), eps_only, rtol=1e-5)


def test_salun_losses_on_a_learned_sigma_dit(learned_dit):
    """SalUn's forget loss matches epsilons only, whatever the variance term; its retain loss is
    DiT's summed loss (VB included) unless method.variance_term=none, which gives its DDPM code's
    epsilon loss."""
    x0, y, seeds = _batch(label=3, n=4)
    assert torch.allclose(_salun().retain_loss(learned_dit, (x0, y, seeds)),
                          DiTLoss(make_scheduler())(learned_dit, (x0, y, seeds), reduction="sum"),
                          rtol=1e-5)
    assert torch.allclose(_salun(variance_term="none").retain_loss(learned_dit, (x0, y, seeds)),
                          _eps_sum(learned_dit, x0, y, seeds), rtol=1e-5)
    torch.manual_seed(5)
    a = _salun().forget_loss(learned_dit, (x0, y, seeds))
    torch.manual_seed(5)
    assert torch.equal(a, _salun(variance_term="none").forget_loss(learned_dit, (x0, y, seeds)))
