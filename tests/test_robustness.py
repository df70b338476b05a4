"""Is the class really gone? The robustness measurements (config section `robustness`) of a run."""
import json

import pytest
import torch
from conftest import SETS, TINY

from dualerase.cli import erase_class
from dualerase.config import load_config
from dualerase.errors import ConfigError

ROBUST = ["--set", "robustness.guidances=[1.0, 4.0]", "--set", "robustness.unconditional=true",
          "--set", "robustness.neighbours=2", "--set", "robustness.samples=6"]


def test_a_run_measures_leakage_and_neighbours_before_and_after(tmp_path, capsys):
    out = tmp_path / "run"
    assert erase_class.main(["3", "--output", str(out), *TINY, *ROBUST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        r = m[side]["robustness"]
        assert set(r["forget_accuracy_at_guidance"]) == {"1", "4"}
        assert all(0 <= v <= 1 for v in r["forget_accuracy_at_guidance"].values())
        assert 0 <= r["unconditional_forget_share"] <= 1
        assert len(r["neighbour_classes"]) == 2 and 3 not in r["neighbour_classes"]
        assert 0 <= r["neighbour_retain_accuracy"] <= 1 and r["neighbour_fid"] >= 0
    assert m["before"]["robustness"]["neighbour_classes"] == m["after"]["robustness"]["neighbour_classes"]
    printed = capsys.readouterr().out
    assert "forget accuracy at guidance 4: " in printed and "unconditional samples called the class" in printed
    assert f"nearest classes {', '.join(map(str, m['after']['robustness']['neighbour_classes']))}" in printed


def test_the_nearest_digits_are_the_ones_the_classifier_confuses(tmp_path):
    """For each digit, the neighbours are the other digits with the highest mean probability on its real images."""
    from dualerase.metrics.classifier import probabilities
    from dualerase.runs.workload import prepare

    w = prepare(load_config("digits", ["classifier.epochs=3", "digits.steps=30"]), progress=False)
    x, y = w.scorer.images, w.scorer.labels
    for digit in (3, 8):
        mean = probabilities(w.scorer.classifier, x[y == digit])[:, :10].mean(0)
        others = sorted((c for c in range(10) if c != digit), key=lambda c: -mean[c])
        assert w.scorer.neighbours(digit, 3) == others[:3]


def test_robustness_settings_are_checked():
    with pytest.raises(ConfigError, match="robustness.guidances"):
        load_config("digits", ["robustness.guidances=[1.0, -2]"])
    with pytest.raises(ConfigError, match="a list"):
        load_config("digits", ["robustness.guidances=4.0"])
    assert load_config("digits", ["robustness.guidances=[1, 4.0]"]).robustness.guidances == [1.0, 4.0]


RELEARN = ["robustness.relearn_images=[2, 4]", "robustness.relearn_steps=3", "robustness.relearn_at=[0, 1, 3]",
           "robustness.relearn_batch=2", "erase.probe_samples=4", "erase.probe_steps=2"]


def test_the_relearning_attack_probes_a_fine_tuned_copy_and_is_deterministic(monkeypatch):
    """The attack's mechanics, with the probe replaced by a reading of the weights (a tiny model's samples are all
    junk, FA 0 at every step): the same seed gives the same curve, another seed another; the model itself is left as
    it was; step 0 reads the model as given; area and steps to relearn follow their definitions."""
    from dualerase.runs import robustness
    from dualerase.runs.workload import prepare

    def weights_reading(self, model):
        return float(sum(p.detach().double().sum() for p in model.parameters()).abs() % 1)

    monkeypatch.setattr(robustness.ForgetProbe, "__call__", weights_reading)
    cfg = load_config("digits", SETS + RELEARN + ["robustness.relearn_lr=0.05"])
    w = prepare(cfg, progress=False)
    before = {k: v.clone() for k, v in w.model.state_dict().items()}
    first, second = robustness.relearn(w.model, w, cfg, 3), robustness.relearn(w.model, w, cfg, 3)
    assert first == second  # the same seed: the same images, timesteps and noise
    assert all(torch.equal(v, w.model.state_dict()[k]) for k, v in before.items())  # it attacks a copy
    for k in ("2", "4"):
        attack = first["relearn"][k]
        assert attack["images"] == int(k) and list(attack["forget_accuracy"]) == ["0", "1", "3"]
        curve = list(attack["forget_accuracy"].values())
        assert curve[0] == weights_reading(None, w.model) and len(set(curve)) == 3  # fine-tuned between probes
        assert attack["area"] == pytest.approx((0.5 * (curve[0] + curve[1]) + 2 * 0.5 * (curve[1] + curve[2])) / 3)
        assert attack["steps_to_relearn"] == next((s for s, fa in zip((0, 1, 3), curve) if fa >= 0.5), None)
    other = load_config("digits", SETS + RELEARN + ["robustness.relearn_lr=0.05", "seed=1"])
    assert robustness.relearn(w.model, w, other, 3) != first  # another seed, other draws


def test_a_run_writes_the_relearning_curves_before_and_after(tmp_path, capsys):
    out = tmp_path / "run"
    assert erase_class.main(["3", "--output", str(out), *TINY, *[a for s in RELEARN for a in ("--set", s)]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        assert set(m[side]["robustness"]["relearn"]) == {"2", "4"}
    assert "relearning on 4 images, forget accuracy at steps 0, 1, 3" in capsys.readouterr().out


def test_the_conditioning_attack_fits_a_new_class_embedding_and_nothing_else():
    """A model whose class-3 row was replaced by class 5's (the label unlinked, the weights intact): the attack's
    fitted row lowers DiT's loss on real 3s labelled 3 (the same timesteps and noise before and after), leaves every
    weight as it was, and changes nothing for other labels."""
    from dualerase.models.dit import embedders, make_scheduler
    from dualerase.models.loss import DiTLoss
    from dualerase.runs.robustness import fitted_embedding
    from dualerase.runs.workload import prepare

    cfg = load_config("digits", SETS + ["robustness.attack_steps=40", "robustness.attack_lr=0.05",
                                        "robustness.relearn_batch=16"])
    w = prepare(cfg, progress=False)
    unlinked = w.model
    with torch.no_grad():
        for e in embedders(unlinked):
            e.class_embedder.embedding_table.weight[3] = e.class_embedder.embedding_table.weight[5]
    real = w.real_data(3, cfg, False)
    x, y = real.forget_x[:64], real.forget_y[:64]
    attacked = fitted_embedding(unlinked, x, y, 3, 3, cfg, torch.Generator().manual_seed(0))
    loss, seeds = DiTLoss(make_scheduler()), torch.arange(64)
    with torch.no_grad():
        assert loss(attacked, (x, y, seeds)).item() < loss(unlinked, (x, y, seeds)).item()
        assert all(torch.equal(a, b) for a, b in zip(attacked.state_dict().values(), unlinked.state_dict().values()))
        fives = torch.full((64,), 5)
        assert loss(attacked, (x, fives, seeds)).item() == loss(unlinked, (x, fives, seeds)).item()


def test_a_run_writes_the_conditioning_attack_before_and_after(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["robustness.attack_steps=2", "robustness.attack_images=4", "erase.probe_samples=4", "erase.probe_steps=2"]
    assert erase_class.main(["3", "--output", str(out), *TINY, *[a for s in sets for a in ("--set", s)]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        a = m[side]["robustness"]["conditioning_attack"]
        assert (a["start"], a["steps"], a["images"]) == ("class", 2, 4)
        assert 0 <= a["forget_accuracy"] <= 1 and 0 <= a["forget_accuracy_before"] <= 1
    assert "conditioning attack (a new class embedding from the class row, 2 steps)" in capsys.readouterr().out
