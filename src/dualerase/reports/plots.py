"""Curves from per-step logs: the forget loss and the gradient norms of erasure, and the FA probe.

The forget loss with its spread across seeds is the paper's Figure 1, the forget and retain
gradient norms its Figure 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no backend is chosen, a notebook's stays
from matplotlib.ticker import LogLocator, MaxNLocator, ScalarFormatter

from dualerase.storage import atomic_path

COLORS = {"dual": "tab:blue", "shared": "tab:orange"}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)


def _grid(logs: dict[tuple, Path]):
    """A panel per (class, method): rows of classes, columns of methods.

    With one method the classes wrap into rows of up to 5 panels (a single column of ten would be a
    strip). axes[i][j] is class i, method j either way."""
    methods = sorted({k[0] for k in logs})
    classes = list(dict.fromkeys(k[2] for k in logs))
    cols = min(len(classes), 5) if len(methods) == 1 else len(methods)
    rows = -(-len(classes) // cols) if len(methods) == 1 else len(classes)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    grid = fig.subplots(rows, cols, squeeze=False)
    if len(methods) > 1:
        return fig, grid, methods, classes
    flat = list(grid.flat)
    for ax in flat[len(classes):]:
        ax.set_visible(False)
    return fig, [[ax] for ax in flat[:len(classes)]], methods, classes


def _label(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("outer step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def _readable_axis(ax, curves: list[np.ndarray]) -> bool:
    """Choose the panel's y scale from what it shows; whether to draw the curves negated.

    Log when every value has one sign and they span more than two decades, else linear with a few
    plain ticks; limits from the 1st-99th percentiles (on a log scale at most four decades from the
    median), so that one diverging run's spike does not flatten every other curve. The curves are
    to be drawn negated when all are negative (their magnitude is drawn)."""
    values = np.concatenate([c[np.isfinite(c)] for c in curves]) if curves else np.array([])
    if values.size == 0:
        return False
    flip = bool(np.all(values < 0))
    shown = -values if flip else values
    lo, hi = np.percentile(shown, 1), np.percentile(shown, 99)
    if np.all(shown > 0) and hi / lo > 100:
        # at most 4 decades either side of the median: a diverged run runs off the top
        middle = np.median(shown)
        lo, hi = max(lo, middle / 1e4), min(hi, middle * 1e4)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=5))
        ax.set_ylim(lo / 1.5, hi * 1.5)
    else:
        formatter = ScalarFormatter(useMathText=True)
        formatter.set_powerlimits((-2, 3))
        ax.yaxis.set_major_formatter(formatter)
        ax.yaxis.set_major_locator(MaxNLocator(5))
        pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
    return flip


def plot_curves(logs: dict[tuple, Path], out: Path) -> None:
    """Write forget_loss.png and grad_norms.png into `out`, from the runs' per-step logs.

    `logs` maps (method, optimizer, class, seed) to a log.jsonl; missing logs are skipped, and
    without any nothing is written."""
    logs = {k: p for k, p in logs.items() if p.exists()}
    if not logs:
        return
    records = {k: _read(p) for k, p in logs.items()}
    fig, axes, methods, classes = _grid(logs)
    for i, cls in enumerate(classes):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            drawn = {}
            for optimizer in COLORS:
                runs = [_series(r, "forget_loss") for k, r in records.items()
                        if k[:3] == (method, optimizer, cls)]
                if runs:
                    n = min(len(r) for r in runs)
                    drawn[optimizer] = np.stack([r[:n] for r in runs])
            flip = _readable_axis(ax, [stack.mean(0) for stack in drawn.values()])
            for optimizer, stack in drawn.items():
                stack = -stack if flip else stack
                mean, std = stack.mean(0), stack.std(0)
                color = COLORS[optimizer]
                ax.plot(mean, color=color,
                        label=f"{optimizer} ({len(stack)} seed{'' if len(stack) == 1 else 's'})")
                ax.fill_between(np.arange(len(mean)), mean - std, mean + std, color=color,
                                alpha=0.25)
            _label(ax, f"{method}, class {cls}",
                   "-forget loss (ascended loss)" if flip else "forget loss")
    fig.suptitle("Forget loss during unlearning: mean and +-1 std across seeds", fontsize=10)
    _save(fig, out / "forget_loss.png")

    fig, axes, methods, classes = _grid(logs)
    for i, cls in enumerate(classes):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            shown = []
            for optimizer, color in COLORS.items():
                runs = [r for k, r in records.items() if k[:3] == (method, optimizer, cls)]
                if not runs:
                    continue
                for key, style in (("forget_grad_norm", "-"), ("retain_grad_norm", "--"),
                                   ("joint_grad_norm", ":")):
                    series = [_series(r, key) for r in runs]
                    n = min(len(s) for s in series)
                    stack = np.stack([s[:n] for s in series])
                    if n and np.isfinite(stack).any():
                        curve = np.nanmean(stack, 0)
                        shown.append(curve)
                        ax.plot(curve, style, color=color,
                                label=f"{optimizer} {key.split('_')[0]}", linewidth=1)
            _readable_axis(ax, shown)
            _label(ax, f"{method}, class {cls}", "gradient norm")
    fig.suptitle("Gradient norms of forget and retain steps (mean across seeds)", fontsize=10)
    _save(fig, out / "grad_norms.png")


def plot_forget_curve(log: list[dict], target: float, limit: int, path: Path) -> None:
    """Draw one run's forget_curve.png at `path`: the forget-accuracy probe over outer steps.

    With the stopping `target`; `limit` is erase.outer_steps, so a run whose `log` ended before it
    was stopped by the probe."""
    probes = [(r["step"] + 1, r["probe_forget_accuracy"]) for r in log
              if "probe_forget_accuracy" in r]
    fig = Figure(figsize=(4.8, 3.0))
    ax = fig.subplots()
    if probes:
        steps, fa = zip(*probes)
        ax.plot(steps, fa, "o-", color=COLORS["dual"], label="probe forget accuracy")
    ax.axhline(target, color="tab:red", linestyle="--", linewidth=1,
               label=f"target {target:g} (two probes in a row)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(0, limit)
    ax.yaxis.set_major_locator(MaxNLocator(5))
    stopped = f", stopped at step {len(log)}" if len(log) < limit else ""
    _label(ax, f"Forget accuracy during erasure{stopped}", "forget accuracy")
    _save(fig, path)
