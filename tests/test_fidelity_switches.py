"""Published choices we do not follow by default, each behind a config value: with the value set,
our loss or Fisher equals a transcription written from the published description (SA's save_fim,
SalUn's and SA's training step)."""
import pytest
import torch

from dualerase.models.dit import build_dit, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.unlearn.methods import MethodConfig, make_method

T = 1000
NULL = 5  # the null class of a 5-class DiT


@pytest.fixture
def dit():
    torch.manual_seed(0)
    return build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2,
                     head_dim=8, learn_sigma=False).double()


def _batch(label, n, seed0=0):
    gen = torch.Generator().manual_seed(100 + seed0)
    return (torch.rand(n, 1, 4, 4, generator=gen).double() * 2 - 1, torch.full((n,), label),
            torch.arange(seed0, seed0 + n))


def _alphas_bar():
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def _sa(**cfg):
    return make_method(MethodConfig(name="sa", **cfg), DiTLoss(make_scheduler()), forget_class=1,
                       num_classes=5)


def test_sa_fisher_loss_drops_each_timesteps_label_as_save_fim(dit):
    """save_fim in train mode: every timestep's label is the null class with probability p.
    Transcription: per t, the pixel-summed epsilon loss at that t's label, summed over all T (the
    draws, in our order, are the data)."""
    x0, y, seed = _batch(2, 1, seed0=9)
    ours = sum(part
               for part in DiTLoss(make_scheduler()).timestep_sum(dit, (x0, y, seed), T, 250, 0.3))
    gen = torch.Generator().manual_seed(9)
    e = torch.randn((T, 1, 4, 4), generator=gen).double()
    labels = torch.where(torch.rand(T, generator=gen) < 0.3, NULL, 2)
    a = _alphas_bar().view(-1, 1, 1, 1)
    eps = dit(a.sqrt() * x0 + (1 - a).sqrt() * e, torch.arange(T), class_labels=labels).sample
    assert 200 < int((labels == NULL).sum()) < 400
    assert torch.allclose(ours, (e - eps).square().sum(), rtol=1e-5)


def test_sa_fisher_of_every_class_gives_the_forget_and_null_rows_mass(dit):
    """By default SA's Fisher sees replays of the retained classes, labels kept: the forget class's
    and the null class's embedding rows get none. With fisher_classes=all (one sample in K a
    forget-class replay) and fisher_label_dropout both rows get Fisher mass, as in SA's save_fim."""
    retained = [_batch((0, 2, 3, 4)[i % 4], 1, seed0=i) for i in range(20)]

    def rows(**cfg):
        sa = _sa(grad_samples=20, fisher_timesteps=10, fisher_chunk=10, **cfg)
        sa.forget_replay = _batch(1, 8, seed0=50)[0]
        sa.prepare(dit, None, lambda size: iter(retained), progress=False)
        tables = [f for n, f in sa.fisher.items()
                  if n.endswith("class_embedder.embedding_table.weight")]
        return sum(t.sum(1) for t in tables)  # per class, over every block's embedder

    default, published = rows(), rows(fisher_classes="all", fisher_label_dropout=0.1)
    assert default[1] == 0 and default[NULL] == 0
    assert published[1] > 0 and published[NULL] > 0
    assert all(default[c] > 0 for c in (0, 2, 3, 4))


def test_sa_fisher_on_images_in_the_unit_range_as_save_fim(dit):
    """save_fim computes its Fisher on the images it saved, in [0, 1]: with fisher_unit_range the
    Fisher is that of (x + 1) / 2. Transcription: per sample, the squared gradient of its
    pixel-summed epsilon loss summed over all T timesteps, averaged over the samples."""
    samples = [_batch((0, 2, 3, 4)[i % 4], 1, seed0=i) for i in range(4)]
    sa = _sa(grad_samples=4, fisher_timesteps=T, fisher_chunk=250, fisher_unit_range=True)
    sa.prepare(dit, None, lambda size: iter(samples), progress=False)
    loss = DiTLoss(make_scheduler())
    expected = {n: torch.zeros_like(p) for n, p in dit.named_parameters()}
    for x, y, seed in samples:
        dit.zero_grad()
        sum(loss.timestep_sum(dit, ((x + 1) / 2, y, seed), T, 250, 0.0)).backward()
        for n, p in dit.named_parameters():
            expected[n] += p.grad.square() / len(samples)
    for n, f in sa.fisher.items():
        assert torch.allclose(f.double(), expected[n], rtol=1e-4, atol=1e-12), n
    default = _sa(grad_samples=4, fisher_timesteps=T, fisher_chunk=250)
    default.prepare(dit, None, lambda size: iter(samples), progress=False)
    name = next(iter(sa.fisher))
    assert not torch.allclose(default.fisher[name].double(), expected[name], rtol=1e-3)


def test_sa_replays_the_forget_class_from_its_own_stream_only_for_a_fisher_of_every_class():
    class Source:
        real = type("Real", (),
                    {"forget_x": torch.zeros(3, 1, 4, 4), "forget_y": torch.full((3,), 1)})

        def __init__(self):
            self.asked = []

        def surrogate(self, like):
            return torch.rand(like.shape)

        def replay(self, labels, stream="replay"):
            self.asked.append((stream, sorted(set(labels.tolist())), len(labels)))
            return torch.zeros(len(labels), 1, 4, 4)

    for classes, asked in (("retain", [("replay", [0, 2, 3, 4], 8)]),
                           ("all", [("fisher_replay", [1], 2), ("replay", [0, 2, 3, 4], 8)])):
        source = Source()
        _sa(fisher_classes=classes, replay_per_class=2).data(source)
        assert source.asked == asked


def test_antithetic_timesteps_as_the_published_training_step(dit):
    """SalUn's and SA's DDPM training step: t = randint(T, n // 2 + 1); t = cat([t, T - t - 1])[:n].
    Ours, with method.antithetic_timesteps: the first n // 2 + 1 timesteps from their samples'
    seeds, the rest mirrored."""
    x0, y, seeds = _batch(3, 5)
    drawn = torch.stack([torch.randint(0, T, (1,),
                                       generator=torch.Generator().manual_seed(int(s)))[0]
                         for s in seeds])
    t = drawn[:5 // 2 + 1]
    published = torch.cat([t, T - t - 1])[:5]
    plain, antithetic = DiTLoss(make_scheduler()), DiTLoss(make_scheduler(), antithetic=True)
    assert torch.equal(plain.draws(dit, (x0, y, seeds))[2], drawn)
    assert torch.equal(antithetic.draws(dit, (x0, y, seeds))[2], published)
    # SalUn's saliency loss mirrors once more: same
    assert torch.equal(antithetic.mirrored(published), published)
