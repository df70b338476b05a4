"""The benchmark behind fid-bench: every (method, optimizer, class, seed) cell of a spec run once, then the
method x optimizer x class table (forget accuracy, retain accuracy, FID, spread over seeds)."""
from __future__ import annotations

import csv
import io
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dualerase.config import PRESETS, Config, load_config, preset_names, saved_config, to_dict
from dualerase.data.classes import Classes, resolve_class
from dualerase.data.folders import check_writable
from dualerase.errors import UsageError
from dualerase.integrations.claims import claim, claimed
from dualerase.launch import main_decides, processes
from dualerase.reports.plots import plot_curves
from dualerase.reports.robustness import flatten
from dualerase.reports.tables import markdown, relearn_panels, robust_keys
from dualerase.runs.evaluation import SCORES
from dualerase.runs.job import mean_std, run
from dualerase.runs.plan import cells_passes, estimate, passes_table
from dualerase.runs.tuning import plot_sensitivity, select, settings_of, sweep_settings, tune_spec, write_tuned
from dualerase.runs.workload import check_inputs, classes_of
from dualerase.storage import atomic_write_json, atomic_write_text
from dualerase.unlearn import DivergenceError

TUNING_POLL_S = 30.0  # how often a job that finished its tuning cells looks whether the other jobs' are done
BENCH_FILES = ("results.md", "results.csv", "results.json", "forget_loss.png", "grad_norms.png", "sensitivity.png",
               "relearn_curve.png")  # what a benchmark writes into its output folder
SPEC_KEYS = {"config": "digits", "methods": ["sfron"], "optimizers": ["dual", "shared"], "classes": ["3"],
             "seeds": [0], "set": [], "tune": None, "sweep": None}  # tune, sweep: runs/tuning.py


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


def _scores(side: dict) -> dict:
    return {**side, **flatten(side.get("robustness", {}))}


def aggregate(cells: list[dict]) -> list[dict]:
    """Rows per (method, optimizer, class) over seeds, then per (method, optimizer) over classes, of every score of
    SCORES and of the robustness section.

    A class row holds mean and std across seeds; an "all" row holds the mean over classes of those means and of
    those stds (the spread across runs, as in the paper's Std column), and the gap to the base model; a single class
    gets no "all" row."""
    def key(m):
        return m["method"], m["optimizer"], setting_label(m.get("setting", ())), str(m["forget_class"])

    scores = [*SCORES, *robust_keys(cells)]

    per_class = []
    for (method, optimizer, setting, cls), group in itertools.groupby(sorted(cells, key=key), key=key):
        sides = [(_scores(m["after"]), _scores(m["before"])) for m in group]
        row = {"method": method, "optimizer": optimizer, "setting": setting, "class": cls, "runs": len(sides)}
        for score in scores:
            row[score], row[f"{score}_std"] = mean_std([after.get(score) for after, _ in sides])
            row[f"base_{score}"] = mean_std([before.get(score) for _, before in sides])[0]
        per_class.append(row)
    overall = []
    for (method, optimizer, setting), group in itertools.groupby(
            per_class, key=lambda r: (r["method"], r["optimizer"], r["setting"])):
        group = list(group)
        if len(group) == 1:  # one class: its row says it all
            continue
        row = {"method": method, "optimizer": optimizer, "setting": setting, "class": "all",
               "runs": sum(r["runs"] for r in group)}
        for score in scores:
            for col in (score, f"{score}_std", f"base_{score}"):
                row[col] = mean_std([r[col] for r in group])[0]
        overall.append(row)
    return overall + per_class


def setting_label(setting) -> str:
    """A cell's setting (its own overrides, from a tuning grid or a sweep) as the tables show it."""
    return " ".join(setting)


def cell_name(method: str, optimizer: str, cls: str, seed: int, setting=()) -> str:
    return f"{method} / {optimizer} / class {cls} / seed {seed}" + (f" / {setting_label(setting)}" if setting else "")


def cell_folder(output: Path, method: str, optimizer: str, cls: str, seed: int, setting=()) -> Path:
    tag = "".join(f"-{key.split('.')[-1]}{value}" for key, value in (item.split("=", 1) for item in setting))
    return output / "cells" / f"{method}-{optimizer}-{cls.replace(' ', '_')}-s{seed}{tag.replace(' ', '')}"


Cell = tuple[str, str, str, int, tuple]  # method, optimizer, class, seed, setting (overrides of its own)


def check_cells(grid, output: Path) -> None:
    """Refuse, before any work (and in a dry run), a benchmark whose started or finished cells ran with another config:
    their numbers would sit in one table with the new ones."""
    for cell, cfg in zip(grid.cells, grid.configs):
        saved = cell_folder(output, *cell) / "config.yaml"
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
    where, spec = spec, read_spec(spec)
    for name, value in (("classes", classes), ("methods", methods), ("optimizers", optimizers), ("seeds", seeds)):
        if value:
            spec[name] = list(value)
    spec["overrides"] = list(overrides)
    if spec["tune"] is not None:
        spec["tune"] = tune_spec(spec, where)

    def settings(optimizer: str) -> list[list[str]]:  # a sweep's values, with the key of the optimizer mode
        return sweep_settings(spec, where, optimizer) if spec["sweep"] is not None else [[]]

    cells = [(method, optimizer, str(cls), seed, tuple(setting)) for method in spec["methods"]
             for optimizer in spec["optimizers"] for setting in settings(optimizer)
             for cls in spec["classes"] for seed in spec["seeds"]]
    configs = configs_of(spec, cells)
    grid = Grid(spec, cells, configs, classes_of(configs[0]))  # the command line's model, if it names one
    for cls in spec["classes"]:
        resolve_class(str(cls), grid.classes)
    return grid


def configs_of(spec: dict, cells: list[Cell], extra: list[str] = ()) -> list[Config]:
    """Every cell's config (checked before any cell runs): the spec's preset and overrides, the command line's, the
    `extra` ones (a tuning run's), the cell's setting, then its method, optimizer and seed."""
    return [load_config(spec["config"], [*spec["set"], *spec["overrides"], *extra, *setting, f"method.name={method}",
                                         f"erase.optimizer={optimizer}", f"seed={seed}"])
            for method, optimizer, _, seed, setting in cells]


def tuning_grid(grid: Grid) -> Grid:
    """The tuning run of a spec with `tune`: each method's grid of settings on the tuning seeds, under tune.set."""
    spec, tune = grid.spec, grid.spec["tune"]
    cells = [(method, optimizer, str(cls), seed, tuple(setting)) for method in spec["methods"]
             for optimizer in spec["optimizers"] for setting in settings_of(tune, method, optimizer)
             for cls in tune["classes"] or spec["classes"] for seed in tune["seeds"]]
    return Grid(spec, cells, configs_of(spec, cells, tune["set"]), grid.classes)


def dry_run(grid: Grid, output: Path) -> str:
    """Every check a real run makes before its first cell, then the cells to run (a tuning run's first) and their
    network passes."""
    check_writable(output, "--output")
    check_inputs(grid.configs[0])
    parts = [("tuning cells, in tune/", tuning_grid(grid), output / "tune")] if grid.spec["tune"] is not None else []
    lines = []
    for name, g, out in [*parts, ("cells" + (" (each pair at the setting tuning chooses)" if parts else ""), grid,
                                  output)]:
        check_cells(g, out)
        todo = [(c, cfg) for c, cfg in zip(g.cells, g.configs) if not (cell_folder(out, *c) / "metrics.json").exists()]
        shown = min(len(g.classes), g.configs[0].eval.grid_classes)
        rows = cells_passes(todo, len(g.classes), shown)
        lines += [f"dry run: {len(g.cells)} {name}, {len(g.cells) - len(todo)} finished in {out}, {len(todo)} to run:",
                  *(f"  {cell_name(*c)}" for c, _ in todo)]
        if rows:
            lines += [f"network passes of the {len(todo)} cells to run, in one job (one pass = one image through the "
                      f"network):", passes_table(rows), estimate(g.configs[0], rows)]
    return "\n".join(lines)


def tuned(grid: Grid, output: Path, **kwargs) -> BenchResult:
    """A spec with `tune`: the tuning run in output/tune, each (method, optimizer)'s operating point chosen from it
    alone (`tuning.select`) and written to output/tuned/, then the reporting grid at those settings in output."""
    stage = tuning_grid(grid)
    tuning, polls = bench(stage, output / "tune", **kwargs), 0
    while not kwargs.get("aggregate_only") and main_decides(tuning.running):  # wait, then share the report
        if polls == 0 and processes().is_main_process:
            print(f"fid-bench: waiting for {tuning.running} tuning cell(s) other jobs run", file=sys.stderr)
        time.sleep(TUNING_POLL_S)
        tuning, polls = bench(stage, output / "tune", **kwargs), polls + 1  # also takes over a dead job's cells
    if tuning.pending or not tuning.cells:
        return tuning  # other jobs run the rest of the tuning grid
    chosen = select(tuning.cells, grid.spec["tune"]["fa_target"], grid.spec["tune"]["retain_drop"])
    missing = {(m, o) for m, o, *_ in grid.cells} - set(chosen)
    if missing:
        raise UsageError(f"no tuning cell of {sorted(missing)} finished (all diverged?): see {output / 'tune'}")
    grid.cells = [(m, o, c, s, tuple(chosen[(m, o)]["setting"])) for m, o, c, s, _ in grid.cells]
    grid.configs = configs_of(grid.spec, grid.cells)
    if processes().is_main_process:
        write_tuned(chosen, {(m, o): cfg for (m, o, *_), cfg in zip(grid.cells, grid.configs)}, grid.spec,
                    output / "tuned")
    return bench(grid, output, **kwargs)


@dataclass
class BenchResult:
    """What a benchmark left: the table's rows, every finished cell's metrics, the diverged and the unfinished cells,
    and results.md's text (None when other jobs still run cells, or when every cell diverged)."""

    output: Path
    rows: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    running: int = 0  # of the pending cells, those claimed by a job (running, or dead and not yet taken over)
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
    for i, ((method, optimizer, cls, seed, setting), cfg) in enumerate(zip(grid.cells, grid.configs)):
        out = cell_folder(output, method, optimizer, cls, seed, setting)
        if (out / "metrics.json").exists() or (out / "diverged.txt").exists():  # an interrupted run resumes here
            continue
        if aggregate_only or i % shard[1] != shard[0] or not main_decides(main and claim(out, claim_timeout * 3600)):
            continue  # another shard's, or another job's (claimed)
        if main:
            print(f"fid-bench: cell {i + 1}/{len(grid.cells)}: {cell_name(method, optimizer, cls, seed, setting)}",
                  file=sys.stderr)
        try:
            run(cfg, cls, out, resume="latest", progress=progress)  # a killed cell continues
        except DivergenceError as e:  # a result too: the cell is reported, the benchmark goes on
            if main:
                atomic_write_text(out / "diverged.txt", str(e))
    state.wait_for_everyone()
    result, logs, broken = BenchResult(output), {}, []
    for method, optimizer, cls, seed, setting in grid.cells:  # every finished cell, in the grid's order, whoever ran it
        out = cell_folder(output, method, optimizer, cls, seed, setting)
        name = cell_name(method, optimizer, cls, seed, setting)
        logs[method, optimizer, cls, seed] = out / "log.jsonl"  # a sweep draws sensitivity.png instead
        if (out / "metrics.json").exists():
            result.cells.append({**json.loads((out / "metrics.json").read_text()), "setting": list(setting)})
        elif (out / "diverged.txt").exists():
            result.diverged.append(f"{name}: {(out / 'diverged.txt').read_text()}")
            broken.append({"method": method, "optimizer": optimizer, "seed": seed, "setting": list(setting)})
        else:
            result.pending.append(name)
            result.running += claimed(out)
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
    if grid.spec["sweep"] is None:
        plot_curves(logs, output)
    else:
        plot_sensitivity(result.cells, broken, grid.spec["sweep"], output / "sensitivity.png")
    relearn_panels(result.cells, output / "relearn_curve.png")
    result.table = table
    return result
