"""Acceptance on the embedded default with default settings (slow: run with
`python -m pytest -m slow`)."""
import json

import pytest

from dualerase.cli import erase_class

# Every digit at seed 0, and the two hardest (5 and 7) at seeds 1 and 2 too: `erase-class N` as a
# user types it.
CASES = [(str(d), 0) for d in range(10)] + [(d, s) for d in ("5", "7") for s in (1, 2)]


@pytest.mark.slow
@pytest.mark.parametrize(("digit", "seed"), CASES)
def test_default_erasure_forgets_and_keeps_the_rest(digit, seed, tmp_path):
    out = tmp_path / digit
    assert erase_class.main([digit, "--seed", str(seed), "--output", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["before"], m["after"]
    # the base model draws every class recognisably
    assert min(before["per_class_accuracy"].values()) >= 0.9
    assert after["forget_accuracy"] <= 0.05
    assert after["retain_accuracy"] >= before["retain_accuracy"] - 0.03
    assert after["fid"] <= 1.5 * before["fid"]


@pytest.fixture(scope="module")
def digits_world():
    from dualerase.config import load_config
    from dualerase.runs.workload import prepare

    cfg = load_config("digits", ["robustness.relearn_images=[64]", "robustness.attack_steps=200"])
    return cfg, prepare(cfg, progress=False)


@pytest.mark.slow
def test_the_attacks_keep_what_the_base_model_knows_and_find_a_class_that_was_only_unlinked(
        digits_world):
    """On the base model the relearning attack keeps digit 3 (its curve stays high); a model whose
    3-rows of the class embedders are 8's (label unlinked, weights kept) draws no 3 from its label,
    and the conditioning attack finds the 3 again with a new embedding
    (`python benchmarks/attacks.py`: area 0.96; FA 0 -> 0.78 under attack)."""
    from dualerase.runs.robustness import conditioning_attack, relearn, unlinked

    cfg, w = digits_world
    assert relearn(w.model, w, cfg, 3)["relearn"]["64"]["area"] >= 0.85
    attack = conditioning_attack(unlinked(w.model, 3, 8), w, cfg, 3)["conditioning_attack"]
    assert attack["forget_accuracy_before"] <= 0.1 and attack["forget_accuracy"] >= 0.5


@pytest.mark.slow
def test_a_weak_erasure_is_relearned_faster_than_the_default_one(digits_world, tmp_path):
    """An erasure stopped at the first probe that reads FA <= 0.1 is erased by the evaluation too,
    yet the relearning attack brings the digit back faster (a larger area under its curve) than
    after the default 200 outer steps (`python benchmarks/attacks.py`: 150 steps, area 0.62 against
    0.39)."""
    from dualerase import erase_class
    from dualerase.runs.robustness import relearn

    cfg, w = digits_world
    strong = erase_class(3, output=tmp_path / "strong", progress=False)
    weak = erase_class(3, overrides={"erase.stop_at_forget_accuracy": 0.1},
                       output=tmp_path / "weak", progress=False)
    assert weak.metrics["outer_steps"] < strong.metrics["outer_steps"]
    assert max(strong.metrics["after"]["forget_accuracy"],
               weak.metrics["after"]["forget_accuracy"]) <= 0.1
    areas = [relearn(m.model, w, cfg, 3)["relearn"]["64"]["area"] for m in (weak, strong)]
    assert areas[0] >= areas[1] + 0.1, areas
