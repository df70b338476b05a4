"""The evaluation protocol: its samplers, the fast protocol, the base model sampled once.

The samplers it may use, the fast protocol for quick looks, and the base model sampled once per
protocol however many methods, modes and seeds a benchmark runs."""
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY

from dualerase import sampling
from dualerase.cli import erase_class, fid_bench
from dualerase.config import load_config
from dualerase.models.dit import make_scheduler, sampler_scheduler
from dualerase.runs import evaluation
from dualerase.runs.evaluation import evaluation_config
from dualerase.sampling import class_labels, sample


class Oracle(torch.nn.Module):
    """A stand-in DiT that knows the clean image.

    It predicts exactly the noise that takes `x0` to x_t under DiT's schedule (and no variance)."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0, self.ac = x0, make_scheduler().alphas_cumprod
        self.config = SimpleNamespace(in_channels=1, out_channels=1, sample_size=8,
                                      num_embeds_ada_norm=10)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device and dtype

    device, dtype = torch.device("cpu"), torch.float32

    def forward(self, x, t, class_labels):
        ac = self.ac[t.long()].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - ac.sqrt() * self.x0[:len(x)]) / (1 - ac).sqrt())


@pytest.mark.parametrize("kind", ["ddim", "dpm-solver++"])
def test_few_step_samplers_follow_dits_schedule(kind):
    """Driven by an exact noise predictor, DDIM and DPM-Solver++ reach the clean image in 10 steps.

    Their noise schedule and timesteps are the ones the model was trained on."""
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    out = sample(Oracle(x0), sampler_scheduler(kind), class_labels(10, 1)[:4], num_steps=10,
                 guidance=1.0, seed=0, progress=False, quantize=False)
    assert torch.allclose(out, x0, atol=1e-4)
    with pytest.raises(ValueError, match="unknown sample.scheduler"):
        sampler_scheduler("euler")


def test_fast_protocol_quarters_the_samples_and_says_so(tmp_path):
    cfg = load_config("digits", ["eval.protocol=fast"])
    fast = evaluation_config(cfg)
    assert (fast.sample.scheduler, fast.sample.steps) == ("ddpm", 50)
    assert (fast.eval.forget_samples, fast.eval.retain_samples_per_class) == (50, 25)
    assert evaluation_config(load_config("digits")) == load_config("digits")  # full: as configured
    out = tmp_path / "fast"
    assert erase_class.main(["3", "--output", str(out), *TINY, "--set", "eval.protocol=fast",
                             "--set", "eval.forget_samples=12"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["protocol"].startswith("fast: for quick looks only")
    assert m["protocol"]["sampler"].startswith("DDPM")
    # TINY's 4 steps are already fewer
    assert (m["protocol"]["steps"], m["protocol"]["forget_samples"]) == (4, 3)
    assert m["protocol"]["retain_samples"] == 9 * 2  # TINY's 10 per class, quartered
    assert len(list((out / "samples" / "forget").glob("*.png"))) == 3
    # said once
    assert "Protocol: FAST (for quick looks only" in (out / "model" / "README.md").read_text()
    from dualerase.bench.bench import markdown

    table = markdown([], [m], "fid-bench digits")
    assert "Protocol: FAST (for quick looks only" in table and "PROTOCOL" not in table


def test_a_benchmark_samples_the_base_model_once_per_class(tmp_path, monkeypatch):
    """2 classes x 2 methods: the base model's scores are sampled twice and its grid once.

    The scores once per class, the grid once (digits grids show all ten classes whatever the forget
    class); every other cell reads the cache."""
    calls = []
    real_evaluate, real_sample = evaluation.evaluate, sampling.sample

    def counting_evaluate(model, w, cfg, forget_class, *args, **kwargs):
        calls.append(("evaluate", forget_class, model is w.model))
        return real_evaluate(model, w, cfg, forget_class, *args, **kwargs)

    def counting_sample(model, *args, **kwargs):
        if kwargs.get("desc") == "sample grid" and kwargs.get("cache_dir") is not None:
            cached = (list(kwargs["cache_dir"].glob("batch-*.pt")) if kwargs["cache_dir"].exists()
                      else [])
            calls.append(("grid", str(kwargs["cache_dir"]), len(cached) > 0))
        return real_sample(model, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", counting_evaluate)
    monkeypatch.setattr(sampling, "sample", counting_sample)
    # a cache no other test has filled
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path / "cache"))
    args = ["--classes", "3", "5", "--seeds", "0", "--methods", "ga", "sfron", "--optimizers",
            "dual", "--output", str(tmp_path / "bench"), *TINY]
    assert fid_bench.main(args) == 0
    base = [c for c in calls if c[0] == "evaluate" and c[2]]
    assert sorted(c[1] for c in base) == [3, 5]
    base_grids = [c for c in calls if c[0] == "grid" and "base-grid" in c[1]]
    assert len(base_grids) == 4 and len({c[1] for c in base_grids}) == 1
    # sampled by the first cell, read by the others
    assert [c[2] for c in base_grids] == [False] + [True] * 3


def test_sa_replay_is_drawn_once_for_both_optimizer_modes(tmp_path, monkeypatch):
    drawn = []
    real_sample = sampling.sample

    def counting_sample(model, *args, **kwargs):
        if kwargs.get("desc") == "replay":
            folder = kwargs["cache_dir"]
            drawn.append(not (folder.exists() and any(folder.glob("batch-*.pt"))))
        return real_sample(model, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample", counting_sample)
    # a cache no other test has filled
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path / "cache"))
    for mode in ("dual", "shared"):
        assert erase_class.main(["3", "--output", str(tmp_path / mode), *TINY, "--set",
                                 "method.name=sa", "--set", f"erase.optimizer={mode}"]) == 0
    assert drawn == [True, False]  # the second mode reads the first one's replay samples


def test_the_opt_in_gates_of_forget_accuracy():
    """A near-white image, a grid pattern or a weak guess are not counted under the opt-in gates.

    With eval.fa_min_confidence 0.9 and eval.fa_real_distance 4.5 (the digits rule before "not a
    digit"), a near-white image, a grid pattern (even at probability 1.00) or a weak guess do not
    count, a confident sample near a real one does; without them (both presets now) the top class
    alone decides, as the published evaluator."""
    from dualerase.metrics.fid import DigitsScorer
    from dualerase.metrics.scorer import counts_as_forget
    from dualerase.models.digits import load_digits

    x, y = load_digits()
    scorer = DigitsScorer(None, None, 1.0, x, y)
    one = x[y == 1][0]
    grid = torch.ones(1, 8, 8)
    grid[:, 1::3, :] = grid[:, :, 1::3] = -1  # white squares on black lines, like erased samples
    near_white = torch.ones(1, 8, 8)
    near_white[0, 0, 0] = 0.5
    noisy_one = (one + 0.1 * torch.randn(one.shape,
                                         generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    images = torch.stack([near_white, grid, one, noisy_one])
    probs = torch.full((4, 10), 0.01)
    probs[:, 1] = torch.tensor([0.91, 1.00, 0.40, 0.95])  # all four: top class 1
    digits = load_config("digits", ["eval.fa_min_confidence=0.9", "eval.fa_real_distance=4.5"]).eval
    assert counts_as_forget(probs, images, 1, digits,
                            scorer).tolist() == [False, False, False, True]
    for preset in ("digits", "imagenet"):
        assert counts_as_forget(probs, images, 1, load_config(preset).eval,
                                scorer).tolist() == [True] * 4
    assert counts_as_forget(probs, images, 2, digits, scorer).tolist() == [False] * 4


def test_distance_to_the_nearest_real_digit():
    """`real_distance`: the L2 distance to the closest real image of the class, 0 for a real one."""
    from dualerase.metrics.fid import DigitsScorer
    from dualerase.models.digits import load_digits

    x, y = load_digits()
    scorer = DigitsScorer(None, None, 1.0, x, y)
    sevens = x[y == 7]
    assert scorer.real_distance(sevens[:3], 7).tolist() == [0.0, 0.0, 0.0]
    shifted = sevens[:1] + 0.5
    expected = (shifted.flatten(1) - sevens.flatten(1)).norm(dim=1).min()
    assert torch.allclose(scorer.real_distance(shifted, 7), expected.view(1))
    assert scorer.real_distance(sevens[:1], 3).item() > 0
