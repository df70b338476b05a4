"""A fair comparison: every method at its own best setting, and the sensitivity DualOptim claims.

A benchmark spec may hold
* `tune:` a grid of settings per method (`grid: {method: {key: [values]}}`, or one per optimizer mode
  `{method: {dual: {...}, shared: {...}}}`; every combination a setting), run on the tuning seeds (`seeds`, never the
  reporting ones) and classes (`classes`, default the spec's) under extra overrides (`set`, e.g. the fast
  protocol). Each (method, optimizer) pair's operating point is chosen by `select`: the lowest FID among the settings
  whose forget accuracy is at most `fa_target` and whose retain accuracy is within `retain_drop` of the base
  model's, else the lowest forget accuracy. The chosen settings are written as configs
  (`tuned/<method>-<optimizer>.yaml`) and the reporting grid runs each pair at its own;
* `sweep:` one key (`key`, or one per optimizer mode: the forget lr of dual mode is the shared lr of shared) over
  `values`: every cell of the grid at every value, and `sensitivity.png`, forget accuracy and FID against the value,
  dual vs shared, a panel per method with a band over seeds.
"""
from __future__ import annotations

import dataclasses
import itertools
import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dualerase.config import Config
from dualerase.errors import UsageError
from dualerase.reports.plots import COLORS, _save
from dualerase.runs.job import mean_std
from dualerase.runs.plan import config_text
from dualerase.storage import atomic_write_text

TUNE_KEYS = {"seeds": [100, 101], "classes": None, "set": [], "grid": {}, "fa_target": 0.05, "retain_drop": 0.03}


def tune_spec(spec: dict, where: str) -> dict:
    """The spec's `tune` block with TUNE_KEYS' defaults, checked: known keys, a grid of lists per known method, and
    tuning seeds that are not reporting seeds."""
    tune = spec["tune"]
    if not isinstance(tune, dict) or set(tune) - set(TUNE_KEYS):
        raise UsageError(f"tune in {where} must be a mapping of {', '.join(TUNE_KEYS)}")
    tune = {**TUNE_KEYS, **tune}
    overlap = set(tune["seeds"]) & set(spec["seeds"])
    if overlap:
        raise UsageError(f"tune.seeds and seeds in {where} share {sorted(overlap)}: tuning seeds must never be "
                         "reporting seeds")
    for method in tune["grid"]:
        for optimizer in spec["optimizers"]:
            keys = _grid(tune, method, optimizer)
            if not isinstance(keys, dict) or not all(isinstance(v, list) and v for v in keys.values()):
                raise UsageError(f"tune.grid.{method} in {where} must map config keys to lists of values, or dual "
                                 "and shared to such mappings")
    return tune


def _grid(tune: dict, method: str, optimizer: str) -> dict:
    keys = tune["grid"].get(method) or {}
    return keys.get(optimizer) or {} if isinstance(keys, dict) and set(keys) & {"dual", "shared"} else keys


def settings_of(tune: dict, method: str, optimizer: str) -> list[list[str]]:
    """Every combination of the method's tuning grid (its optimizer mode's, when the grid has one per mode), as
    overrides; [[]] (its preset as it is) when it has none."""
    keys = _grid(tune, method, optimizer)
    return [[f"{k}={v}" for k, v in zip(keys, values)] for values in itertools.product(*keys.values())] or [[]]


def sweep_key(sweep: dict, optimizer: str) -> str:
    """The swept key: one for both modes, or one per mode (the forget lr in dual mode is the shared lr in shared)."""
    return sweep["key"][optimizer] if isinstance(sweep["key"], dict) else sweep["key"]


def sweep_settings(spec: dict, where: str, optimizer: str) -> list[list[str]]:
    sweep = spec["sweep"]
    if not isinstance(sweep, dict) or set(sweep) != {"key", "values"} or not isinstance(sweep["values"], list) or (
            isinstance(sweep["key"], dict) and not set(spec["optimizers"]) <= set(sweep["key"])):
        raise UsageError(f"sweep in {where} must be a mapping of key (a config key, or one per optimizer mode: "
                         "{dual: ..., shared: ...}) and values (a list)")
    return [[f"{sweep_key(sweep, optimizer)}={v}"] for v in sweep["values"]]


def _mean(cells: list[dict], side: str, score: str) -> float | None:
    return mean_std([m[side].get(score) for m in cells])[0]


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value


def select(cells: list[dict], fa_target: float, retain_drop: float) -> dict[tuple[str, str], dict]:
    """Each (method, optimizer) pair's operating point from its tuning cells (metrics with their `setting`): means
    over classes and seeds per setting; the lowest FID among the settings with FA <= fa_target and retain accuracy
    at least the base model's minus retain_drop; if none, the lowest FA (then FID). Returns, per pair, the chosen
    setting with its means and the rule that chose it."""
    groups: dict[tuple, list[dict]] = {}
    for m in cells:
        groups.setdefault((m["method"], m["optimizer"], tuple(m["setting"])), []).append(m)
    scored: dict[tuple[str, str], list[dict]] = {}
    for (method, optimizer, setting), group in groups.items():
        scored.setdefault((method, optimizer), []).append({
            "setting": list(setting), "runs": len(group), "fa": _mean(group, "after", "forget_accuracy"),
            "retain": _mean(group, "after", "retain_accuracy"),
            "base_retain": _mean(group, "before", "retain_accuracy"), "fid": _mean(group, "after", "fid")})
    chosen = {}
    for pair, points in scored.items():
        ok = [p for p in points if p["fa"] is not None and p["fa"] <= fa_target and p["retain"] is not None
              and p["retain"] >= p["base_retain"] - retain_drop]
        if ok:
            best = min(ok, key=lambda p: _or_inf(p["fid"]))
            rule = f"lowest FID with FA <= {fa_target:g} and retain accuracy within {retain_drop:g} of the base"
        else:
            best = min(points, key=lambda p: (_or_inf(p["fa"]), _or_inf(p["fid"])))
            rule = f"no setting met FA <= {fa_target:g} with retain accuracy within {retain_drop:g}: lowest FA"
        chosen[pair] = {**best, "rule": rule, "candidates": len(points)}
    return chosen


def write_tuned(chosen: dict[tuple[str, str], dict], configs: dict[tuple[str, str], Config], spec: dict,
                folder: Path) -> list[Path]:
    """tuned/<method>-<optimizer>.yaml: the reporting config of each pair at its chosen setting (`configs`, one
    reporting cell's each; every key, as `--config` reads it, the seed the first reporting seed), headed by the rule
    and the tuning means that chose it."""
    paths = []
    for (method, optimizer), point in sorted(chosen.items()):
        cfg = dataclasses.replace(configs[method, optimizer], seed=spec["seeds"][0])
        head = (f"# {method} / {optimizer}, tuned by fid-bench on seeds {spec['tune']['seeds']}: "
                f"{' '.join(point['setting']) or 'the preset as it is'}\n# chosen by: {point['rule']} "
                f"(of {point['candidates']} settings); tuning means: FA {_short(point['fa'])}, retain accuracy "
                f"{_short(point['retain'])} (base {_short(point['base_retain'])}), FID {_short(point['fid'])}\n")
        path = folder / f"{method}-{optimizer}.yaml"
        atomic_write_text(path, head + config_text(cfg))
        paths.append(path)
    return paths


def _short(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _value(setting: list[str]) -> float:
    return float(setting[0].split("=", 1)[1])


def sensitivity_series(cells: list[dict], diverged: list[dict], method: str, optimizer: str, score: str) -> dict:
    """One curve of sensitivity.png: at each swept value, per seed the mean over classes, then the mean and std over
    the seeds that finished; `diverged` counts the value's diverged cells (they have no score) out of `runs`."""
    mine = [m for m in cells if m["method"] == method and m["optimizer"] == optimizer]
    broken = [d for d in diverged if d["method"] == method and d["optimizer"] == optimizer]
    values = sorted({_value(m["setting"]) for m in mine + broken})
    per_seed = [[statistics.fmean(x) for seed in sorted({m["seed"] for m in mine})
                 if (x := [m["after"][score] for m in mine if _value(m["setting"]) == v and m["seed"] == seed
                           and m["after"].get(score) is not None])] for v in values]
    return {"values": values,
            "mean": [statistics.fmean(s) if s else None for s in per_seed],
            "std": [statistics.stdev(s) if len(s) > 1 else 0.0 for s in per_seed],
            "diverged": [sum(_value(d["setting"]) == v for d in broken) for v in values],
            "runs": [sum(_value(m["setting"]) == v for m in mine + broken) for v in values]}


def plot_sensitivity(cells: list[dict], diverged: list[dict], sweep: dict, path: Path) -> None:
    """sensitivity.png: forget accuracy (top row, linear) and FID (bottom row, log) against the swept value, a column
    per method, dual and shared in their colours with a +-1 std band over seeds (`sensitivity_series`), the base
    model as a dashed line, and an x at the top of the panel where cells diverged (with their share where some
    finished); one legend, in the first panel."""
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
                ax.axhline(statistics.fmean(base[score]), color="0.5", ls="--", lw=1, label="base model")
            for optimizer, color in COLORS.items():
                curve = sensitivity_series(cells, diverged, method, optimizer, score)
                if not curve["values"]:
                    continue
                x = np.array(curve["values"])
                mean = np.array(curve["mean"], dtype=float)  # None (every seed diverged): not drawn
                std = np.array(curve["std"])
                ax.plot(x, mean, "-o", ms=3, color=color, label=optimizer)
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
                top = 0.95 if optimizer == "dual" else 0.89  # above the data (limits below), the two modes apart
                for v, n, runs in zip(curve["values"], curve["diverged"], curve["runs"]):
                    if n:
                        ax.plot([v], [top], "x", ms=7, mew=2, color=color, transform=ax.get_xaxis_transform())
                        if n < runs:
                            ax.annotate(f"{n}/{runs}", (v, top), xycoords=ax.get_xaxis_transform(), color=color,
                                        fontsize=6, xytext=(5, -2), textcoords="offset points")
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
            ax.set_xlabel(" / ".join(f"{v} ({k})" for k, v in sweep["key"].items()) if isinstance(sweep["key"], dict)
                          else sweep["key"], fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    marks = [Line2D([], [], ls="", marker="x", mew=2, color=c, label=f"{o}: diverged") for o, c in COLORS.items()]
    axes[0][0].legend(handles + marks, labels + [m.get_label() for m in marks], fontsize=6, loc="center right")
    _save(fig, path)
