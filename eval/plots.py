"""Curves from per-step logs: forget loss with its spread across seeds (the paper's Figure 1) and the forget and
retain gradient norms (Figure 2)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval.report import atomic_path  # noqa: E402

COLORS = {"dual": "tab:blue", "shared": "tab:orange"}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)


def _grid(logs: dict[tuple, Path]):
    methods = sorted({k[0] for k in logs})
    classes = list(dict.fromkeys(k[2] for k in logs))
    fig, axes = plt.subplots(len(classes), len(methods), figsize=(3.6 * len(methods), 2.8 * len(classes)),
                             squeeze=False)
    return fig, axes, methods, classes


def _label(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("outer step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_curves(logs: dict[tuple, Path], out: Path) -> None:
    """`logs` maps (method, optimizer, class, seed) to a log.jsonl; writes forget_loss.png and grad_norms.png."""
    logs = {k: p for k, p in logs.items() if p.exists()}
    if not logs:
        return
    records = {k: _read(p) for k, p in logs.items()}
    fig, axes, methods, classes = _grid(logs)
    for i, cls in enumerate(classes):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            for optimizer, color in COLORS.items():
                runs = [_series(r, "forget_loss") for k, r in records.items() if k[:3] == (method, optimizer, cls)]
                if not runs:
                    continue
                n = min(len(r) for r in runs)
                stack = np.stack([r[:n] for r in runs])
                mean, std = stack.mean(0), stack.std(0)
                ax.plot(mean, color=color, label=f"{optimizer} ({len(runs)} seeds)")
                ax.fill_between(np.arange(n), mean - std, mean + std, color=color, alpha=0.25)
            ax.set_yscale("symlog", linthresh=0.1)
            _label(ax, f"{method}, class {cls}", "forget loss")
    fig.suptitle("Forget loss during unlearning: mean and +-1 std across seeds", fontsize=10)
    _save(fig, out / "forget_loss.png")

    fig, axes, methods, classes = _grid(logs)
    for i, cls in enumerate(classes):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            for optimizer, color in COLORS.items():
                runs = [r for k, r in records.items() if k[:3] == (method, optimizer, cls)]
                if not runs:
                    continue
                for key, style in (("forget_grad_norm", "-"), ("retain_grad_norm", "--"), ("joint_grad_norm", ":")):
                    series = [_series(r, key) for r in runs]
                    n = min(len(s) for s in series)
                    stack = np.stack([s[:n] for s in series])
                    if n and np.isfinite(stack).any():
                        ax.plot(np.nanmean(stack, 0), style, color=color, label=f"{optimizer} {key.split('_')[0]}",
                                linewidth=1)
            ax.set_yscale("log")
            _label(ax, f"{method}, class {cls}", "gradient norm")
    fig.suptitle("Gradient norms of forget and retain steps (mean across seeds)", fontsize=10)
    _save(fig, out / "grad_norms.png")
