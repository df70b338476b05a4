"""A fair comparison: each (method, optimizer) pair's operating point, from its tuning cells alone.

The tuning stage (`TuneSpec`) runs each method's grid of settings on seeds that are never reporting
seeds; `select` picks each pair's setting and `write_tuned` writes it as the config the reporting
cells run (`tuned/<method>-<optimizer>.yaml`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dualerase.bench.spec import BenchSpec
from dualerase.config import Config
from dualerase.runs.plan import config_text
from dualerase.runs.trials import mean_std
from dualerase.storage import atomic_write_text


def _mean(cells: list[dict], side: str, score: str) -> float | None:
    return mean_std([m[side].get(score) for m in cells])[0]


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value


def select(cells: list[dict], fa_target: float, retain_drop: float) -> dict[tuple[str, str], dict]:
    """Each (method, optimizer) pair's operating point, chosen from its tuning cells.

    `cells` are metrics with their `setting`, averaged over classes and seeds per setting. The rule:
    the lowest FID among the settings with FA <= fa_target and retain accuracy at least the base
    model's minus retain_drop; if none, the lowest FA (then FID).

    Returns:
        Per pair, the chosen setting with its means and the rule that chose it.
    """
    groups: dict[tuple, list[dict]] = {}
    for m in cells:
        groups.setdefault((m["method"], m["optimizer"], tuple(m["setting"])), []).append(m)
    scored: dict[tuple[str, str], list[dict]] = {}
    for (method, optimizer, setting), group in groups.items():
        scored.setdefault((method, optimizer), []).append({
            "setting": list(setting), "runs": len(group),
            "fa": _mean(group, "after", "forget_accuracy"),
            "retain": _mean(group, "after", "retain_accuracy"),
            "base_retain": _mean(group, "before", "retain_accuracy"),
            "fid": _mean(group, "after", "fid")})
    chosen = {}
    for pair, points in scored.items():
        ok = [p for p in points if p["fa"] is not None and p["fa"] <= fa_target
              and p["retain"] is not None and p["retain"] >= p["base_retain"] - retain_drop]
        if ok:
            best = min(ok, key=lambda p: _or_inf(p["fid"]))
            rule = (f"lowest FID with FA <= {fa_target:g} and retain accuracy within "
                    f"{retain_drop:g} of the base")
        else:
            best = min(points, key=lambda p: (_or_inf(p["fa"]), _or_inf(p["fid"])))
            rule = (f"no setting met FA <= {fa_target:g} with retain accuracy within "
                    f"{retain_drop:g}: lowest FA")
        chosen[pair] = {**best, "rule": rule, "candidates": len(points)}
    return chosen


def write_tuned(chosen: dict[tuple[str, str], dict], configs: dict[tuple[str, str], Config],
                spec: BenchSpec, folder: Path) -> list[Path]:
    """tuned/<method>-<optimizer>.yaml: each pair's reporting config at its chosen setting.

    The config is the pair's in `configs` (one reporting cell's each), with every key, as `--config`
    reads it, and the seed the first reporting seed; it is headed by the rule and the tuning means
    that chose it.

    Returns:
        The files written.
    """
    paths = []
    for (method, optimizer), point in sorted(chosen.items()):
        cfg = dataclasses.replace(configs[method, optimizer], seed=spec.seeds[0])
        head = (f"# {method} / {optimizer}, tuned by fid-bench on seeds {spec.tune.seeds}: "
                f"{' '.join(point['setting']) or 'the preset as it is'}\n"
                f"# chosen by: {point['rule']} (of {point['candidates']} settings); tuning means: "
                f"FA {_short(point['fa'])}, retain accuracy {_short(point['retain'])} "
                f"(base {_short(point['base_retain'])}), FID {_short(point['fid'])}\n")
        path = folder / f"{method}-{optimizer}.yaml"
        atomic_write_text(path, head + config_text(cfg))
        paths.append(path)
    return paths


def _short(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"
