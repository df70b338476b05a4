"""sensitivity.png: forget accuracy and FID against a swept setting, dual vs shared, per method."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dualerase.reports.plots import COLORS, _save


def _value(setting: list[str]) -> float:
    return float(setting[0].split("=", 1)[1])


def sensitivity_series(cells: list[dict], diverged: list[dict], method: str, optimizer: str,
                       score: str) -> dict:
    """One curve of sensitivity.png: the mean and std over seeds at each swept value.

    Per seed the mean over classes, then the mean and std over the seeds that finished; `diverged`
    counts the value's diverged cells (they have no score) out of `runs`."""
    mine = [m for m in cells if m["method"] == method and m["optimizer"] == optimizer]
    broken = [d for d in diverged if d["method"] == method and d["optimizer"] == optimizer]
    values = sorted({_value(m["setting"]) for m in mine + broken})
    per_seed = [[statistics.fmean(x) for seed in sorted({m["seed"] for m in mine})
                 if (x := [m["after"][score] for m in mine
                           if _value(m["setting"]) == v and m["seed"] == seed
                           and m["after"].get(score) is not None])] for v in values]
    return {"values": values,
            "mean": [statistics.fmean(s) if s else None for s in per_seed],
            "std": [statistics.stdev(s) if len(s) > 1 else 0.0 for s in per_seed],
            "diverged": [sum(_value(d["setting"]) == v for d in broken) for v in values],
            "runs": [sum(_value(m["setting"]) == v for m in mine + broken) for v in values]}


def plot_sensitivity(cells: list[dict], diverged: list[dict], xlabel: str, path: Path) -> None:
    """sensitivity.png: forget accuracy and FID against the swept value, a column per method.

    Forget accuracy in the top row (linear), FID in the bottom row (log); dual and shared in their
    colours with a +-1 std band over seeds (`sensitivity_series`), the base model as a dashed line,
    and an x at the top of the panel where cells diverged (with their share where some finished);
    one legend, in the first panel."""
    methods = sorted({m["method"] for m in cells + diverged})
    swept = sorted({_value(m["setting"]) for m in cells + diverged})
    fig = Figure(figsize=(3.6 * len(methods), 5.8))
    axes = fig.subplots(2, len(methods), squeeze=False)
    scores = (("forget_accuracy", "forget accuracy"), ("fid", "FID"))
    base = {s: [m["before"][s] for m in cells if m["before"].get(s) is not None] for s, _ in scores}
    for col, method in enumerate(methods):
        for row, (score, label) in enumerate(scores):
            ax = axes[row][col]
            if base[score]:
                ax.axhline(statistics.fmean(base[score]), color="0.5", ls="--", lw=1,
                           label="base model")
            for optimizer, color in COLORS.items():
                curve = sensitivity_series(cells, diverged, method, optimizer, score)
                if not curve["values"]:
                    continue
                x = np.array(curve["values"])
                mean = np.array(curve["mean"], dtype=float)  # None (every seed diverged): not drawn
                std = np.array(curve["std"])
                ax.plot(x, mean, "-o", ms=3, color=color, label=optimizer)
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
                # above the data (limits below), the two modes apart
                top = 0.95 if optimizer == "dual" else 0.89
                for v, n, runs in zip(curve["values"], curve["diverged"], curve["runs"]):
                    if n:
                        ax.plot([v], [top], "x", ms=7, mew=2, color=color,
                                transform=ax.get_xaxis_transform())
                        if n < runs:
                            ax.annotate(f"{n}/{runs}", (v, top), xycoords=ax.get_xaxis_transform(),
                                        color=color, fontsize=6, xytext=(5, -2),
                                        textcoords="offset points")
            if score == "forget_accuracy":
                ax.set_ylim(-0.03, 1.2)
                ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
            else:
                ax.set_yscale("log")
                ax.set_ylim(ax.get_ylim()[0], ax.get_ylim()[1] * 3)
            if len(swept) > 1 and swept[0] > 0:
                ax.set_xscale("log")
                ax.set_xticks(swept, [f"{v:g}" for v in swept], fontsize=7)
                ax.minorticks_off()
            ax.set_title(f"{method}: {label}", fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    marks = [Line2D([], [], ls="", marker="x", mew=2, color=c, label=f"{o}: diverged")
             for o, c in COLORS.items()]
    axes[0][0].legend(handles + marks, labels + [m.get_label() for m in marks], fontsize=6,
                      loc="center right")
    _save(fig, path)
