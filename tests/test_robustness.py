"""Is the class really gone? The robustness measurements (config section `robustness`) of a run."""
import json

import pytest
from conftest import TINY

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
