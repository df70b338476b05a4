"""Benchmark figures a reader takes in at a glance: every panel has a few short, non-overlapping
tick labels."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from dualerase.reports.plots import _readable_axis

CASES = {
    "gradient ascent, one seed diverging": [-np.exp(np.arange(200) / 20),
                                            np.r_[-np.exp(np.arange(180) / 18),
                                                  -np.full(20, 1e17)]],
    "salun, small positive losses": [0.06 * np.exp(-np.arange(200) / 20) + 1.1e-4,
                                     np.full(200, 2e-4)],
    "salun, losses around zero": [np.linspace(5e-2, -5e-3, 200)],
    "sa, narrow band": [0.12 + 0.01 * np.sin(np.arange(200))],
}


@pytest.mark.parametrize("name", CASES)
def test_each_panel_has_few_short_tick_labels(name):
    fig, ax = plt.subplots(figsize=(3.6, 2.8))
    curves = CASES[name]
    flip = _readable_axis(ax, curves)
    for c in curves:
        ax.plot(-c if flip else c)
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    labels = [t.get_text().replace("\\mathdefault", "").replace("\\times", "x").strip("${}")
              for t, v in zip(ax.get_yticklabels(), ax.get_yticks())
              if lo <= v <= hi and t.get_text()]
    plt.close(fig)
    assert 2 <= len(labels) <= 6, labels
    assert all(len(label) <= 16 for label in labels), labels  # no "6.18782 x 10^-2"-style labels
    # a diverging seed does not stretch the axis over 30 decades
    assert hi / max(lo, 1e-300) < 1e10 or lo < 0


def test_one_method_over_many_classes_wraps_into_rows(tmp_path):
    from dualerase.reports.plots import _grid

    logs = {("sfron", "dual", str(c), 0): tmp_path / f"{c}.jsonl" for c in range(10)}
    fig, axes, methods, classes = _grid(logs)
    assert methods == ["sfron"] and len(axes) == 10 and all(len(row) == 1 for row in axes)
    width, height = fig.get_size_inches()
    assert width > height  # 2 rows of 5, not a column of 10
