"""The benchmark behind fid-bench: every cell of a grid run once, then its table and figures.

The table is method x optimizer x class (forget accuracy, retain accuracy, FID, spread over
seeds)."""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from dualerase.bench.cells import Grid, check_cells, configs_of, setting_label, tuning_grid
from dualerase.bench.records import RESULTS
from dualerase.bench.tuning import select, write_tuned
from dualerase.data.folders import check_cache, check_writable
from dualerase.errors import UsageError
from dualerase.integrations.claims import claim, claimed
from dualerase.launch import main_decides, processes
from dualerase.reports.plots import plot_curves
from dualerase.reports.robustness import flatten
from dualerase.reports.sensitivity import plot_sensitivity
from dualerase.reports.tables import markdown, relearn_panels, robust_keys
from dualerase.runs.checkpoint import disk_full
from dualerase.runs.evaluation import SCORES
from dualerase.runs.job import run
from dualerase.runs.plan import cells_passes, estimate, passes_table
from dualerase.runs.trials import mean_std
from dualerase.runs.workload import check_inputs
from dualerase.storage import atomic_write_json, atomic_write_text
from dualerase.unlearn import DivergenceError

# how often a job done with its tuning cells looks whether the others' are done
TUNING_POLL_S = 30.0
# what a benchmark writes into its output folder
BENCH_FILES = ("results.md", "results.csv", "results.json", "forget_loss.png", "grad_norms.png",
               "sensitivity.png", "relearn_curve.png")


def _scores(side: dict) -> dict:
    return {**side, **flatten(side.get("robustness", {}))}


def aggregate(cells: list[dict]) -> list[dict]:
    """Rows per (method, optimizer, class) over seeds, then per (method, optimizer) over classes.

    Every score of SCORES and of the robustness section. A class row holds mean and std across
    seeds; an "all" row the mean over classes of those means and of those stds (the spread across
    runs, as in the paper's Std column), and the gap to the base model; a single class gets no "all"
    row.
    """
    def key(m):
        return (m["method"], m["optimizer"], setting_label(m.get("setting", ())),
                str(m["forget_class"]))

    scores = [*SCORES, *robust_keys(cells)]
    per_class = []
    for (method, optimizer, setting, cls), group in itertools.groupby(
            sorted(cells, key=key), key=key):
        sides = [(_scores(m["after"]), _scores(m["before"])) for m in group]
        row = {"method": method, "optimizer": optimizer, "setting": setting, "class": cls,
               "runs": len(sides)}
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


def dry_run(grid: Grid, output: Path) -> str:
    """Every check a real run makes before its first cell; the cells to run and their passes.

    Returns:
        The text `--dry-run` prints.
    """
    check_writable(output, "--output")
    check_cache()
    check_inputs(grid.configs[0])
    stages = []
    if grid.spec.tune is not None:
        stages.append(("tuning cells, in tune/", tuning_grid(grid), output / "tune"))
        stages.append(("cells (each pair at the setting tuning chooses)", grid, output))
    else:
        stages.append(("cells", grid, output))
    lines = []
    for name, stage, out in stages:
        check_cells(stage, out)
        todo = [(cell, cfg) for cell, cfg in zip(stage.cells, stage.configs)
                if not (cell.folder(out) / "metrics.json").exists()]
        shown = min(len(stage.classes), stage.configs[0].eval.grid_classes)
        rows = cells_passes(todo, len(stage.classes), shown)
        lines += [f"dry run: {len(stage.cells)} {name}, {len(stage.cells) - len(todo)} finished in "
                  f"{out}, {len(todo)} to run:", *(f"  {cell.name}" for cell, _ in todo)]
        if rows:
            lines += [f"network passes of the {len(todo)} cells to run, in one job (one pass = one "
                      "image through the network):", passes_table(rows),
                      estimate(stage.configs[0], rows)]
    return "\n".join(lines)


def tuned(grid: Grid, output: Path, **kwargs) -> BenchResult:
    """A spec with `tune`: the tuning stage, each pair's setting chosen from it, then the report.

    The tuning stage runs in output/tune; each (method, optimizer)'s operating point is chosen from
    it alone (`tuning.select`) and written to output/tuned/; the reporting grid runs at those
    settings.

    Raises:
        UsageError: a (method, optimizer) pair none of whose tuning cells finished.
    """
    stage = tuning_grid(grid)
    tuning, polls = bench(stage, output / "tune", **kwargs), 0
    while not kwargs.get("aggregate_only") and main_decides(tuning.running):  # wait, then share
        if polls == 0 and processes().is_main_process:
            print(f"fid-bench: waiting for {tuning.running} tuning cell(s) other jobs run",
                  file=sys.stderr)
        time.sleep(TUNING_POLL_S)
        tuning, polls = bench(stage, output / "tune", **kwargs), polls + 1  # takes over dead claims
    if tuning.pending or not tuning.cells:
        return tuning  # other jobs run the rest of the tuning grid
    tune = grid.spec.tune
    chosen = select(tuning.cells, tune.fa_target, tune.retain_drop)
    missing = {(cell.method, cell.optimizer) for cell in grid.cells} - set(chosen)
    if missing:
        raise UsageError(f"no tuning cell of {sorted(missing)} finished (all diverged?): see "
                         f"{output / 'tune'}")
    grid.cells = [cell._replace(setting=tuple(chosen[cell.method, cell.optimizer]["setting"]))
                  for cell in grid.cells]
    grid.configs = configs_of(grid.spec, grid.cells)
    if processes().is_main_process:
        configs = {(cell.method, cell.optimizer): cfg
                   for cell, cfg in zip(grid.cells, grid.configs)}
        write_tuned(chosen, configs, grid.spec, output / "tuned")
    return bench(grid, output, **kwargs)


@dataclass
class BenchResult:
    """What a benchmark left: the table's rows and text, and its cells by how they ended.

    `rows`: the table's rows; `cells`: every finished cell's metrics; `diverged`, `failed` and
    `pending`: the diverged, the failed (any other error) and the unfinished cells; `table`:
    results.md's text (None when other jobs still run cells, or when no cell finished).
    """

    output: Path
    rows: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # an error other than divergence
    pending: list[str] = field(default_factory=list)
    # of the pending cells, those claimed by a job (running, or dead and not taken over)
    running: int = 0
    table: str | None = None


def run_cells(grid: Grid, output: Path, *, progress: bool, shard: tuple[int, int],
              claim_timeout: float) -> None:
    """Run every unfinished cell of `grid` that this job may take: its shard's, and unclaimed.

    Passes over the grid until one takes no cell, so that a cell whose job died after this one
    first found it claimed is taken over before this job looks for the tables."""
    while _run_pass(grid, output, progress=progress, shard=shard, claim_timeout=claim_timeout):
        pass


def _run_pass(grid: Grid, output: Path, *, progress: bool, shard: tuple[int, int],
              claim_timeout: float) -> int:
    """One pass of `run_cells`: the number of cells this job took."""
    main, taken = processes().is_main_process, 0
    for i, (cell, cfg) in enumerate(zip(grid.cells, grid.configs)):
        out = cell.folder(output)
        if any((out / name).exists() for name in RESULTS):
            continue
        mine = i % shard[1] == shard[0]
        if not mine or not main_decides(main and claim(out, claim_timeout * 3600)):
            continue  # another shard's, or another job's (claimed)
        taken += 1
        if main:
            print(f"fid-bench: cell {i + 1}/{len(grid.cells)}: {cell.name}", file=sys.stderr)
        try:
            run(cfg, cell.cls, out, resume="latest", progress=progress)  # a killed cell continues
        except DivergenceError as e:  # a result too: the cell is reported, the benchmark goes on
            if main:
                atomic_write_text(out / "diverged.txt", str(e))
        except Exception as e:  # noqa: BLE001 - any other failure: recorded, and the others run
            if isinstance(e, UsageError) or disk_full(e, out):
                raise  # the user's to fix (a full disk too): stop, so that it runs once fixed
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            if main:
                atomic_write_text(out / "failed.txt", f"{reason}\n\n{traceback.format_exc()}")
                print(f"fid-bench: cell {cell.name} failed ({reason}); its traceback is in "
                      f"{out / 'failed.txt'} (delete it to run the cell again); going on",
                      file=sys.stderr)
    return taken


def bench(grid: Grid, output: Path, *, progress: bool = True, shard: tuple[int, int] = (0, 1),
          claim_timeout: float = 6.0, aggregate_only: bool = False,
          command: str = "fid-bench") -> BenchResult:
    """Run this job's cells of `grid`, then, once every cell is finished, write the tables.

    With `aggregate_only` nothing runs and the tables cover the cells finished so far. A killed cell
    continues from its checkpoint; a diverged cell is reported, and the benchmark goes on. Writes
    results.md / .csv / .json and the figures into `output`.

    Raises:
        UsageError: `output` cannot be written, or holds cells run with another config.
    """
    state = processes()
    check_writable(output, "--output")  # before the first cell, not after it
    check_cache()
    check_cells(grid, output)
    if not aggregate_only:
        run_cells(grid, output, progress=progress, shard=shard, claim_timeout=claim_timeout)
    state.wait_for_everyone()
    result, logs, broken = BenchResult(output), {}, []
    for cell in grid.cells:  # every finished cell, in the grid's order, whoever ran it
        out = cell.folder(output)
        logs[cell[:4]] = out / "log.jsonl"  # a sweep draws sensitivity.png instead
        if (out / "metrics.json").exists():
            metrics = json.loads((out / "metrics.json").read_text())
            result.cells.append({**metrics, "setting": list(cell.setting)})
        elif (out / "failed.txt").exists():
            reason = (out / "failed.txt").read_text().splitlines()[0]
            result.failed.append(f"{cell.name}: {reason}")
        elif (out / "diverged.txt").exists():
            result.diverged.append(f"{cell.name}: {(out / 'diverged.txt').read_text()}")
            broken.append({"method": cell.method, "optimizer": cell.optimizer, "seed": cell.seed,
                           "setting": list(cell.setting)})
        else:
            result.pending.append(cell.name)
            result.running += claimed(out)
    if (result.pending and not aggregate_only) or not result.cells:
        # other jobs (or shards) run the rest: the last job to finish writes the tables
        return result
    result.rows = aggregate(result.cells)
    if state.is_main_process:  # under a multi-process launch the main process writes the tables
        result.table = write_tables(grid, result, command)
        draw_figures(grid, result, logs, broken)
    return result


def write_tables(grid: Grid, result: BenchResult, command: str) -> str:
    """results.json, results.csv and results.md (returned) of a benchmark's finished cells."""
    output = result.output
    spec = dataclasses.asdict(grid.spec)
    atomic_write_json(output / "results.json", {"spec": spec, "rows": result.rows,
                                                "cells": result.cells})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(result.rows[0]))
    writer.writeheader()
    writer.writerows(result.rows)
    atomic_write_text(output / "results.csv", buf.getvalue())
    table = markdown(result.rows, result.cells, command, result.diverged, result.failed)
    if result.pending:
        table += "\n".join([f"Not finished when these tables were written: {len(result.pending)} "
                            "cell(s)", ""] + [f"* {name}" for name in result.pending]) + "\n"
    atomic_write_text(output / "results.md", table)
    return table


def draw_figures(grid: Grid, result: BenchResult, logs: dict, broken: list[dict]) -> None:
    """The loss figures (a sweep's sensitivity.png instead) and relearn_curve.png."""
    sweep = grid.spec.sweep
    if sweep is None:
        plot_curves(logs, result.output)
    else:
        if isinstance(sweep.key, dict):
            xlabel = " / ".join(f"{v} ({k})" for k, v in sweep.key.items())
        else:
            xlabel = sweep.key
        plot_sensitivity(result.cells, broken, xlabel, result.output / "sensitivity.png")
    relearn_panels(result.cells, result.output / "relearn_curve.png")


def run_spec(grid: Grid, output: Path, **kwargs) -> BenchResult:
    """A spec's benchmark: through its tuning stage first if it has one (`tuned`), else `bench`."""
    return (tuned if grid.spec.tune is not None else bench)(grid, output, **kwargs)
