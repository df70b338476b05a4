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
    assert (m["before"]["robustness"]["neighbour_classes"]
            == m["after"]["robustness"]["neighbour_classes"])
    printed = capsys.readouterr().out
    assert ("forget accuracy at guidance 4: " in printed
            and "unconditional samples called the class" in printed)
    assert (f"nearest classes {', '.join(map(str, m['after']['robustness']['neighbour_classes']))}"
            in printed)


def test_the_nearest_digits_are_the_ones_the_classifier_confuses(tmp_path):
    """Each digit's neighbours: the other digits of highest mean probability on its real images."""
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
    assert load_config("digits",
                       ["robustness.guidances=[1, 4.0]"]).robustness.guidances == [1.0, 4.0]
    # not None
    assert load_config("digits",
                       ["robustness.attack_start=null"]).robustness.attack_start == "null"


RELEARN = ["robustness.relearn_images=[2, 4]", "robustness.relearn_steps=3",
           "robustness.relearn_at=[0, 1, 3]", "robustness.relearn_batch=2", "erase.probe_samples=4",
           "erase.probe_steps=2"]


def test_the_relearning_attack_probes_a_fine_tuned_copy_and_is_deterministic(monkeypatch):
    """The attack's mechanics, with the probe replaced by a reading of the weights.

    A tiny model's samples are all junk, FA 0 at every step. The same seed gives the same curve,
    another seed another; the model itself is left as it was; step 0 reads the model as given; area
    and steps to relearn follow their definitions."""
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
    # it attacks a copy
    assert all(torch.equal(v, w.model.state_dict()[k]) for k, v in before.items())
    for k in ("2", "4"):
        attack = first["relearn"][k]
        assert attack["images"] == int(k) and list(attack["forget_accuracy"]) == ["0", "1", "3"]
        curve = list(attack["forget_accuracy"].values())
        # fine-tuned between probes
        assert curve[0] == weights_reading(None, w.model) and len(set(curve)) == 3
        assert attack["area"] == pytest.approx(
            (0.5 * (curve[0] + curve[1]) + 2 * 0.5 * (curve[1] + curve[2])) / 3)
        assert attack["steps_to_relearn"] == next(
            (s for s, fa in zip((0, 1, 3), curve) if fa >= 0.5), None)
    other = load_config("digits", SETS + RELEARN + ["robustness.relearn_lr=0.05", "seed=1"])
    assert robustness.relearn(w.model, w, other, 3) != first  # another seed, other draws


def test_a_run_writes_the_relearning_curves_before_and_after(tmp_path, capsys):
    out = tmp_path / "run"
    assert erase_class.main(["3", "--output", str(out), *TINY,
                             *[a for s in RELEARN for a in ("--set", s)]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        assert set(m[side]["robustness"]["relearn"]) == {"2", "4"}
    printed = capsys.readouterr().out
    assert "relearning on 4 images, forget accuracy at steps 0, 1, 3" in printed
    assert ((out / "relearn_curve.png").stat().st_size
            and "log.jsonl, relearn_curve.png" in printed.splitlines()[-1])


def test_the_conditioning_attack_fits_a_new_class_embedding_and_nothing_else():
    """A model whose class-3 row was replaced by class 5's: the attack fits a row for class 3.

    The label is unlinked, the weights intact. The attack's fitted row lowers DiT's loss on real 3s
    labelled 3 (the same timesteps and noise before and after), leaves every weight as it was, and
    changes nothing for other labels."""
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
        assert all(torch.equal(a, b)
                   for a, b in zip(attacked.state_dict().values(), unlinked.state_dict().values()))
        fives = torch.full((64,), 5)
        assert loss(attacked, (x, fives, seeds)).item() == loss(unlinked, (x, fives, seeds)).item()


def test_a_run_writes_the_conditioning_attack_before_and_after(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["robustness.attack_steps=2", "robustness.attack_images=4", "erase.probe_samples=4",
            "erase.probe_steps=2"]
    assert erase_class.main(["3", "--output", str(out), *TINY,
                             *[a for s in sets for a in ("--set", s)]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        a = m[side]["robustness"]["conditioning_attack"]
        assert (a["start"], a["steps"], a["images"]) == ("class", 2, 4)
        assert 0 <= a["forget_accuracy"] <= 1 and 0 <= a["forget_accuracy_before"] <= 1
    assert ("conditioning attack (a new class embedding from the class row, 2 steps)"
            in capsys.readouterr().out)


def _cell(method: str, optimizer: str, seed: int, area: float, relearned: int | None) -> dict:
    """A finished cell's metrics with a robustness record, as a run writes it."""
    def side(fa: float, attack: float, curve: list[float], steps: int | None) -> dict:
        return {"forget_accuracy": fa, "retain_accuracy": 0.9, "fid": 5.0,
                "robustness": {"forget_accuracy_at_guidance": {"4": fa}, "conditioning_attack": {
                    "start": "class", "steps": 200, "forget_accuracy": attack},
                    "relearn": {"8": {"images": 8,
                                      "forget_accuracy": dict(zip(("0", "50", "100"), curve)),
                                      "steps_to_relearn": steps, "area": sum(curve) / 3}}}}
    return {"method": method, "optimizer": optimizer, "forget_class": 3, "seed": seed,
            "protocol": {"sampler": "ddpm", "steps": 10, "guidance": 1.0, "forget_samples": 10,
                         "retain_samples": 90, "reference": "held-out digits",
                         "feature_extractor": "digits net", "classifier": "digits net",
                         "seed": seed},
            "before": side(0.9, 1.0, [0.9, 1.0, 1.0], 0),
            "after": side(0.0, 0.1 * seed, [0.0, area, 2 * area], relearned)}


def test_fid_bench_tabulates_the_robustness_numbers_and_draws_the_relearning_curves(tmp_path):
    """Robustness scores are aggregated like the protocol's; relearn_curve.png is drawn.

    Mean and std over seeds, the base beside them, with the share of runs that relearned;
    relearn_curve.png holds a line per method and optimizer."""
    from dualerase.bench.bench import aggregate, markdown, relearn_panels

    cells = [_cell("ga", "dual", s, 0.1, None) for s in (0, 1)] + [
        _cell("ga", "shared", s, 0.3, 100 if s else None) for s in (0, 1)]
    rows = {r["optimizer"]: r for r in aggregate(cells)}
    assert (rows["dual"]["relearn 8 relearned"] == 0.0
            and rows["shared"]["relearn 8 relearned"] == 0.5)
    assert (rows["shared"]["relearn 8 final"] == pytest.approx(0.6)
            and rows["dual"]["base_attack FA"] == 1.0)
    assert (rows["dual"]["attack FA"] == pytest.approx(0.05)
            and rows["dual"]["attack FA_std"] == pytest.approx(0.0707, abs=1e-4))
    text = markdown(list(rows.values()), cells, "fid-bench")
    assert ("| ga | shared | 3 | 0.900 -> 0.000 +- 0.000 | 1.000 -> 0.050 +- 0.071 | "
            "0.967 -> 0.300 +- 0.000 | 1.000 -> 0.600 +- 0.000 | 1.000 -> 0.500 +- 0.707 |") in text
    assert (relearn_panels(cells, tmp_path / "relearn_curve.png")
            and (tmp_path / "relearn_curve.png").stat().st_size)
    # more lines in a row than matplotlib has colours (a colour per method, both optimizers): still
    # drawn
    many = [_cell(m, o, 0, 0.1, None) for m in ("ga", "sfron", "salun", "sa", "m5", "m6")
            for o in ("dual", "shared")]
    assert relearn_panels(many, tmp_path / "many.png")
    bare = [{**c, "before": {k: v for k, v in c["before"].items() if k != "robustness"},
             "after": {k: v for k, v in c["after"].items() if k != "robustness"}} for c in cells]
    assert "Is the class really gone?" not in markdown(aggregate(bare), bare, "fid-bench")
    assert not relearn_panels(bare, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


DATA_NOUN = """  1 This is a license header line of WordNet's data files.
00001740 03 n 01 entity 0 000 | that which exists
00002000 03 n 01 animal 0 001 @ 00001740 n 0000 | a living thing
00003000 05 n 01 dog 0 002 @ 00002000 n 0000 ~ 00004000 n 0000 | a canine
00004000 05 n 02 retriever 0 hound 0 002 ~ 00005000 n 0000 @ 00003000 n 0000 | a dog
00005000 05 n 01 golden_retriever 0 001 @ 00004000 n 0000 | a retriever
00006000 05 n 01 Labrador 0 002 @i 00004000 n 0000 @ 00003000 n 0000 | another retriever
00007000 05 n 01 cat 0 001 @ 00002000 n 0000 | a feline
"""


def test_wordnet_chains_follow_the_first_hypernym_and_siblings_are_fewest_edges_away(tmp_path):
    """The table builder reads data.noun's pointers; the shipped table's siblings are right.

    It reads the word count in hex, other pointers before the hypernym, an instance hypernym; the
    shipped table gives golden retriever's siblings as the four other retrievers."""
    from dualerase.data import wordnet
    from dualerase.data.classes import imagenet

    (tmp_path / "data.noun").write_text(DATA_NOUN)
    chains = wordnet.hypernym_chains(tmp_path / "data.noun",
                                     ["n00005000", "n00006000", "n00007000", "n00009999"])
    assert chains == [["n00005000", "n00004000", "n00003000", "n00002000", "n00001740"],
                      ["n00006000", "n00004000", "n00003000", "n00002000", "n00001740"],
                      ["n00007000", "n00002000", "n00001740"], ["n00009999"]]
    synsets = imagenet().synsets
    # the retrievers, then a tie by index
    assert wordnet.siblings(synsets, 207, 5) == [205, 206, 208, 209, 159]
    assert (wordnet.distance(synsets[207], synsets[208]) == 2
            and wordnet.distance(synsets[207], synsets[207]) == 0)
    # not an ImageNet synset: no WordNet rule
    assert wordnet.siblings(["n00000001", *synsets[:3]], 0, 2) is None
    assert wordnet.siblings(None, 0, 2) is None
