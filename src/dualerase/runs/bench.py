"""The benchmark behind fid-bench: every (method, optimizer, class, seed) cell of a spec run once, then the
method x optimizer x class table (forget accuracy, retain accuracy, FID, spread over seeds)."""
from __future__ import annotations

import csv
import io
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dualerase.config import PRESETS, Config, load_config, preset_names, saved_config, to_dict
from dualerase.data.classes import Classes, resolve_class
from dualerase.data.folders import check_writable
from dualerase.errors import UsageError
from dualerase.integrations.claims import claim
from dualerase.launch import main_decides, processes
from dualerase.reports.plots import plot_curves
from dualerase.reports.robustness import flatten, plot_relearn
from dualerase.reports.robustness import table as robustness_table
from dualerase.reports.summary import number as _num
from dualerase.reports.summary import protocol_line
from dualerase.runs.evaluation import SCORES
from dualerase.runs.job import mean_std, run
from dualerase.runs.workload import classes_of
from dualerase.storage import atomic_write_json, atomic_write_text
from dualerase.unlearn import DivergenceError

SPEC_KEYS = {"config": "digits", "methods": ["sfron"], "optimizers": ["dual", "shared"], "classes": ["3"],
             "seeds": [0], "set": []}


def read_spec(name_or_path: str) -> dict:
    """A benchmark spec: a shipped spec's name or a YAML path; missing keys take SPEC_KEYS' values."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESETS / "bench" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UsageError(f"unknown benchmark spec {name_or_path!r}: give one of {', '.join(preset_names('bench'))} "
                         "or a YAML path")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"benchmark spec {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise UsageError(f"benchmark spec {path} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(sorted(unknown))} in {path}: valid are {', '.join(SPEC_KEYS)}")
    spec = {**SPEC_KEYS, **spec}
    for key in ("methods", "optimizers", "classes", "seeds", "set"):
        if not isinstance(spec[key], list):
            raise UsageError(f"{key} in {path} must be a list, e.g. {key}: {SPEC_KEYS[key]}")
    return spec


def _gap(after: float | None, before: float | None, spec: str) -> str:
    return "n/a" if after is None or before is None else format(after - before, spec)


def _scores(side: dict) -> dict:
    return {**side, **flatten(side.get("robustness", {}))}


def robust_keys(cells: list[dict]) -> list[str]:
    """The robustness scores (reports.robustness.flatten) any cell measured after erasure, in the order first met."""
    return list(dict.fromkeys(k for m in cells for k in flatten(m["after"].get("robustness", {}))))


def aggregate(cells: list[dict]) -> list[dict]:
    """Rows per (method, optimizer, class) over seeds, then per (method, optimizer) over classes, of every score of
    SCORES and of the robustness section.

    A class row holds mean and std across seeds; an "all" row holds the mean over classes of those means and of
    those stds (the spread across runs, as in the paper's Std column), and the gap to the base model; a single class
    gets no "all" row."""
    def key(m):
        return m["method"], m["optimizer"], str(m["forget_class"])

    scores = [*SCORES, *robust_keys(cells)]

    per_class = []
    for (method, optimizer, cls), group in itertools.groupby(sorted(cells, key=key), key=key):
        group = list(group)
        row = {"method": method, "optimizer": optimizer, "class": cls, "runs": len(group)}
        for score in scores:
            row[score], row[f"{score}_std"] = mean_std([_scores(m["after"]).get(score) for m in group])
            row[f"base_{score}"] = mean_std([_scores(m["before"]).get(score) for m in group])[0]
        per_class.append(row)
    overall = []
    for (method, optimizer), group in itertools.groupby(per_class, key=lambda r: (r["method"], r["optimizer"])):
        group = list(group)
        if len(group) == 1:  # one class: its row says it all
            continue
        row = {"method": method, "optimizer": optimizer, "class": "all", "runs": sum(r["runs"] for r in group)}
        for score in scores:
            for col in (score, f"{score}_std", f"base_{score}"):
                row[col] = mean_std([r[col] for r in group])[0]
        overall.append(row)
    return overall + per_class


def markdown(rows: list[dict], cells: list[dict], command: str, diverged: list[str] = ()) -> str:
    """results.md: the paper-shaped table (mean +- std across seeds) and the gap to the base model."""
    head = ("| method | optimizer | class | runs | FA (lower better) | FA, published rule | not a digit | retain acc "
            "| FID | gap FA | gap retain acc | gap FID |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['method']} | {r['optimizer']} | {r['class']} | {r['runs']} | "
                     f"{_num(r['forget_accuracy'], '.3f')} +- {_num(r['forget_accuracy_std'], '.3f')} | "
                     f"{_num(r['forget_accuracy_published'], '.3f')} | {_num(r['forget_not_a_class'], '.3f')} | "
                     f"{_num(r['retain_accuracy'], '.3f')} +- {_num(r['retain_accuracy_std'], '.3f')} | "
                     f"{_num(r['fid'], '.2f')} +- {_num(r['fid_std'], '.2f')} | "
                     f"{_gap(r['forget_accuracy'], r['base_forget_accuracy'], '+.3f')} | "
                     f"{_gap(r['retain_accuracy'], r['base_retain_accuracy'], '+.3f')} | "
                     f"{_gap(r['fid'], r['base_fid'], '+.2f')} |")
    quality = ["| method | optimizer | class | FID | KID | precision | recall | gap KID | gap precision | gap recall |",
               "|---|---|---|---|---|---|---|---|---|---|"]
    quality += [f"| {r['method']} | {r['optimizer']} | {r['class']} | {_num(r['fid'], '.2f')} | "
                f"{_num(r.get('kid'), '.4f')} | {_num(r.get('precision'), '.3f')} | {_num(r.get('recall'), '.3f')} | "
                f"{_gap(r.get('kid'), r.get('base_kid'), '+.4f')} | "
                f"{_gap(r.get('precision'), r.get('base_precision'), '+.3f')} | "
                f"{_gap(r.get('recall'), r.get('base_recall'), '+.3f')} |" for r in rows]
    seeds = sorted({m["seed"] for m in cells})
    base = {}
    for m in cells:
        base.setdefault(str(m["forget_class"]), m["before"])
    base_lines = [f"| {c} | {_num(b['forget_accuracy'], '.3f')} | {_num(b.get('forget_accuracy_published'), '.3f')} | "
                  f"{_num(b.get('forget_not_a_class'), '.3f')} | {_num(b['retain_accuracy'], '.3f')} | "
                  f"{_num(b['fid'], '.2f')} |" for c, b in sorted(base.items())]
    missing = sum(m[side]["fid"] is None for m in cells for side in ("before", "after"))
    proto = protocol_line({**cells[0]["protocol"], "seed": ", ".join(map(str, seeds))})
    return "\n".join([
        "# fid-bench results", "", f"Command: `{command}`", "",
        f"Protocol: {proto}.", "",
        "Each cell is one erasure. `+-` is the sample standard deviation across seeds (n/a from a single seed); an "
        "`all` row averages the per-class means and the per-class standard deviations. Gaps are after minus before "
        "(the base model).", "",
        *([f"FID was not finite in {missing} evaluation(s) (null in their metrics.json, with fid_error saying why): "
           "means and stds are over the others, n/a where none is left.", ""] if missing else []),
        *lines, "", *robustness_table(rows, robust_keys(cells)),
        "Sample quality of the retained classes, on the features FID uses (means over seeds; KID: unbiased MMD; "
        "precision and recall: k-NN balls, k = 3):", "", *quality, "",
        f"Base model (before erasure), scored with the noise of seed {cells[0]['seed']}:", "",
        "| class | FA | FA, published rule | not a digit | retain acc | FID |", "|---|---|---|---|---|---|",
        *base_lines, "",
        *([f"Diverged cells (no after metrics, left out of the table): {len(diverged)}", ""]
          + [f"* {d}" for d in diverged] + [""] if diverged else [])])


def relearn_panels(cells: list[dict], path: Path) -> bool:
    """relearn_curve.png of a benchmark: a row per class, a line per method and optimizer (its band over seeds) and
    the base model's line."""
    panels: dict[str, dict[str, list[dict]]] = {}
    for m in cells:
        lines = panels.setdefault(f"class {m['forget_class']}", {"base": []})
        lines["base"].append(m["before"].get("robustness", {}).get("relearn", {}))
        after = m["after"].get("robustness", {}).get("relearn", {})
        lines.setdefault(f"{m['method']} {m['optimizer']}", []).append(after)
    return plot_relearn(panels, path)


def cell_folder(output: Path, method: str, optimizer: str, cls: str, seed: int) -> Path:
    return output / "cells" / f"{method}-{optimizer}-{cls.replace(' ', '_')}-s{seed}"


Cell = tuple[str, str, str, int]  # method, optimizer, class, seed


def check_cells(grid, output: Path) -> None:
    """Refuse, before any work (and in a dry run), a benchmark whose started or finished cells ran with another config:
    their numbers would sit in one table with the new ones."""
    for (method, optimizer, cls, seed), cfg in zip(grid.cells, grid.configs):
        saved = cell_folder(output, method, optimizer, cls, seed) / "config.yaml"
        if saved.exists() and saved_config(saved) != to_dict(cfg):
            raise UsageError(f"cell {saved.parent} was run with another config: give a new --output for a changed "
                             "benchmark")


@dataclass
class Grid:
    """A spec with the command line's choices applied: its cells, each cell's config, the base model's classes."""

    spec: dict
    cells: list[Cell]
    configs: list[Config]
    classes: Classes


def plan(spec: str = "digits", *, classes: list | None = None, methods: list[str] | None = None,
         optimizers: list[str] | None = None, seeds: list[int] | None = None, overrides: list[str] = ()) -> Grid:
    """Read the spec, apply the choices, and check every cell's config and class before any cell runs."""
    spec = read_spec(spec)
    for name, value in (("classes", classes), ("methods", methods), ("optimizers", optimizers), ("seeds", seeds)):
        if value:
            spec[name] = list(value)
    cells = list(itertools.product(spec["methods"], spec["optimizers"], map(str, spec["classes"]), spec["seeds"]))
    configs = [load_config(spec["config"], [*spec["set"], *overrides, f"method.name={method}",
                                            f"erase.optimizer={optimizer}", f"seed={seed}"])
               for method, optimizer, _, seed in cells]  # every cell's config checked before any cell runs
    known = classes_of(configs[0])
    for cls in spec["classes"]:
        resolve_class(str(cls), known)
    return Grid(spec, cells, configs, known)


@dataclass
class BenchResult:
    """What a benchmark left: the table's rows, every finished cell's metrics, the diverged and the unfinished cells,
    and results.md's text (None when other jobs still run cells, or when every cell diverged)."""

    output: Path
    rows: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    table: str | None = None


def bench(grid: Grid, output: Path, *, progress: bool = True, shard: tuple[int, int] = (0, 1),
          claim_timeout: float = 6.0, aggregate_only: bool = False, command: str = "fid-bench") -> BenchResult:
    """Run every unfinished cell of `grid` that this job may take (its shard, unclaimed), then, once every cell is
    finished or `aggregate_only`, write results.md / .csv / .json and the loss figures into `output`.

    A killed cell continues from its checkpoint; a diverged cell is reported, and the benchmark goes on."""
    state = processes()
    main = state.is_main_process
    check_writable(output, "--output")  # before the first cell, not after it
    check_cells(grid, output)
    for i, ((method, optimizer, cls, seed), cfg) in enumerate(zip(grid.cells, grid.configs)):
        out = cell_folder(output, method, optimizer, cls, seed)
        if (out / "metrics.json").exists() or (out / "diverged.txt").exists():  # an interrupted run resumes here
            continue
        if aggregate_only or i % shard[1] != shard[0] or not main_decides(main and claim(out, claim_timeout * 3600)):
            continue  # another shard's, or another job's (claimed)
        if main:
            print(f"fid-bench: cell {i + 1}/{len(grid.cells)}: {method} / {optimizer} / class {cls} / seed {seed}",
                  file=sys.stderr)
        try:
            run(cfg, cls, out, resume="latest", progress=progress)  # a killed cell continues
        except DivergenceError as e:  # a result too: the cell is reported, the benchmark goes on
            if main:
                atomic_write_text(out / "diverged.txt", str(e))
    state.wait_for_everyone()
    result, logs = BenchResult(output), {}
    for method, optimizer, cls, seed in grid.cells:  # every finished cell, in the grid's order, whichever job ran it
        out = cell_folder(output, method, optimizer, cls, seed)
        name = f"{method} / {optimizer} / class {cls} / seed {seed}"
        logs[method, optimizer, cls, seed] = out / "log.jsonl"
        if (out / "metrics.json").exists():
            result.cells.append(json.loads((out / "metrics.json").read_text()))
        elif (out / "diverged.txt").exists():
            result.diverged.append(f"{name}: {(out / 'diverged.txt').read_text()}")
        else:
            result.pending.append(name)
    if (result.pending and not aggregate_only) or not result.cells:
        return result  # other jobs (or shards) run the rest: the last job to finish writes the tables
    result.rows = aggregate(result.cells)
    if not main:  # under a multi-process launch the main process writes the tables
        return result
    atomic_write_json(output / "results.json", {"spec": grid.spec, "rows": result.rows, "cells": result.cells})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(result.rows[0]))
    writer.writeheader()
    writer.writerows(result.rows)
    atomic_write_text(output / "results.csv", buf.getvalue())
    table = markdown(result.rows, result.cells, command, result.diverged)
    if result.pending:
        table += "\n".join([f"Not finished when these tables were written: {len(result.pending)} cell(s)", ""] +
                            [f"* {name}" for name in result.pending]) + "\n"
    atomic_write_text(output / "results.md", table)
    plot_curves(logs, output)
    relearn_panels(result.cells, output / "relearn_curve.png")
    result.table = table
    return result
