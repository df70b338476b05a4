"""The robustness measurements (config section `robustness`) as table columns and as a figure.

One flat record per evaluation (`flatten`), fid-bench's "Is the class really gone?" table
(`table`), and `relearn_curve.png` (`plot_relearn`): forget accuracy along the relearning attack,
before and after erasure, or per method and optimizer across a benchmark's seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dualerase.reports.plots import _save
from dualerase.reports.summary import method, number


def flatten(r: dict) -> dict[str, float | None]:
    """One evaluation's robustness record `r` as flat scores.

    The scores are `guidance <g>` (forget accuracy at that scale), `unconditional`,
    `neighbour retain acc`, `neighbour FID`, `attack FA`, and per k of the relearning attack
    `relearn <k> area`, `relearn <k> final` (FA at its last probed step) and
    `relearn <k> relearned` (1 when FA reached 0.5 within the budget, else 0: its mean over seeds
    is the share of runs that relearned)."""
    out: dict[str, float | None] = {f"guidance {g}": fa for g, fa
                                    in r.get("forget_accuracy_at_guidance", {}).items()}
    if "unconditional_forget_share" in r:
        out["unconditional"] = r["unconditional_forget_share"]
    if "neighbour_classes" in r:
        out["neighbour retain acc"], out["neighbour FID"] = (r["neighbour_retain_accuracy"],
                                                             r.get("neighbour_fid"))
    if "conditioning_attack" in r:
        out["attack FA"] = r["conditioning_attack"]["forget_accuracy"]
    for k, attack in r.get("relearn", {}).items():
        out[f"relearn {k} area"] = attack["area"]
        out[f"relearn {k} final"] = list(attack["forget_accuracy"].values())[-1]
        out[f"relearn {k} relearned"] = float(attack["steps_to_relearn"] is not None)
    return out


def table(rows: list[dict], keys: list[str]) -> list[str]:
    """fid-bench's robustness table of the scores `keys`, as markdown lines; [] without keys.

    Per row, each score's mean over seeds (std where the row has several) and the base model's
    value beside it ("base -> after")."""
    if not keys:
        return []
    lines = ["| method | optimizer | class | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            spec = ".2f" if k.endswith("FID") else ".3f"
            std = r.get(f"{k}_std")
            cells.append(f"{number(r.get(f'base_{k}'), spec)} -> {number(r.get(k), spec)}"
                         + (f" +- {number(std, spec)}" if std is not None else ""))
        lines.append(f"| {method(r)} | {r['optimizer']} | {r['class']} | " + " | ".join(cells)
                     + " |")
    return ["Is the class really gone? The robustness measurements (docs/robustness.md), base "
            "model -> after erasure, means over seeds (+- their std). `guidance g`: "
            "forget accuracy at that guidance scale; `unconditional`: share of null-class samples "
            "called the class; `attack FA`: forget accuracy under the conditioning attack; "
            "`relearn k`: the relearning attack on k images, `area` the mean forget accuracy along "
            "it, `final` at its last step, `relearned` the share of runs that reached 0.5.", "",
            *lines, ""]


def _curve(attack: dict) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([int(s) for s in attack["forget_accuracy"]])
    return steps, np.array([np.nan if v is None else v for v in attack["forget_accuracy"].values()],
                           dtype=float)


def plot_relearn(panels: dict[str, dict[str, list[dict]]], path: Path) -> bool:
    """Draw relearn_curve.png at `path`: forget accuracy against the relearning attack's steps.

    A row of panels per entry of `panels` (a class), a panel per k of the relearning attack, a line
    per name (name -> the `relearn` records of its runs: the mean across runs, with their min-max
    band when there are several). The base model ("base" or "before" in the name) is grey and
    dotted, a name with "shared" dashed, every other name solid. Returns False (nothing drawn) when
    no record holds an attack."""
    ks = sorted({k for lines in panels.values() for records in lines.values() for r in records
                 for k in r}, key=int)
    if not ks:
        return False
    fig = Figure(figsize=(4.2 * len(ks), 3.2 * len(panels)))
    axes = fig.subplots(len(panels), len(ks), squeeze=False)
    methods: dict[str, str] = {}  # a colour per method, the same in every panel
    for row, (title, lines) in zip(axes, panels.items()):
        for ax, k in zip(row, ks):
            for name, records in lines.items():
                runs = [_curve(r[k]) for r in records if k in r]
                if not runs:
                    continue
                steps, values = runs[0][0], np.stack([v for _, v in runs])
                base = "base" in name or "before" in name
                color = ("grey" if base
                         else methods.setdefault(name.split()[0], f"C{len(methods) % 10}"))
                if base:
                    style = ":"
                elif "shared" in name:
                    style = "--"
                else:
                    style = "-"
                ax.plot(steps, values.mean(0), style, marker="o", ms=3, color=color, label=name)
                if len(runs) > 1:
                    ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.12)
            ax.axhline(0.5, color="black", lw=0.5, ls=":")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{title + ': ' if title else ''}relearning on {k} images", fontsize=9)
            ax.set_xlabel("attack step", fontsize=8)
            ax.set_ylabel("forget accuracy (probe)", fontsize=8)
            ax.legend(fontsize=6, handlelength=4)  # long enough to show a dashed line as dashed
    _save(fig, path)
    return True
