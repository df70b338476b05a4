"""fid-bench: the method x optimizer x class x seed table (forget accuracy, retain accuracy, FID, spread over seeds)."""
from __future__ import annotations

import csv
import io
import itertools
import json
import sys
from pathlib import Path

import yaml

from configs import PRESETS_DIR
from erase import DivergenceError
from eval.imagenet import EvalError
from eval.plots import plot_curves
from eval.report import protocol_line
from eval.storage import atomic_write_json, atomic_write_text
from pipelines.claims import claim, shard_of
from pipelines.classes import resolve_class
from pipelines.config import CommandParser, load_config, to_dict
from pipelines.data import check_writable
from pipelines.errors import ConfigError, UsageError
from pipelines.evaluation import SCORES, main_decides
from pipelines.job import mean_std, run
from pipelines.plan import config_text, passes
from pipelines.workload import classes_of, is_main_process, processes

SPEC_KEYS = {"config": "digits", "methods": ["sfron"], "optimizers": ["dual", "shared"], "classes": ["3"],
             "seeds": [0], "set": []}


def read_spec(name_or_path: str) -> dict:
    """A benchmark spec: a name in configs/bench/ or a YAML path; missing keys take SPEC_KEYS' values."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESETS_DIR / "bench" / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (PRESETS_DIR / "bench").glob("*.yaml"))
        raise UsageError(f"unknown benchmark spec {name_or_path!r}: give one of {', '.join(names)} or a YAML path")
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


def _num(value: float | None, spec: str) -> str:
    """A table number, or n/a for a score that could not be computed (a non-finite FID)."""
    return "n/a" if value is None else format(value, spec)


def _gap(after: float | None, before: float | None, spec: str) -> str:
    return "n/a" if after is None or before is None else format(after - before, spec)


def aggregate(cells: list[dict]) -> list[dict]:
    """Rows per (method, optimizer, class) over seeds, then per (method, optimizer) over classes.

    A class row holds mean and std across seeds; an "all" row holds the mean over classes of those means and of
    those stds (the spread across runs, as in the paper's Std column), and the gap to the base model."""
    def key(m):
        return m["method"], m["optimizer"], str(m["forget_class"])

    per_class = []
    for (method, optimizer, cls), group in itertools.groupby(sorted(cells, key=key), key=key):
        group = list(group)
        row = {"method": method, "optimizer": optimizer, "class": cls, "runs": len(group)}
        for score in SCORES:
            row[score], row[f"{score}_std"] = mean_std([m["after"][score] for m in group])
            row[f"base_{score}"] = mean_std([m["before"][score] for m in group])[0]
        per_class.append(row)
    overall = []
    for (method, optimizer), group in itertools.groupby(per_class, key=lambda r: (r["method"], r["optimizer"])):
        group = list(group)
        row = {"method": method, "optimizer": optimizer, "class": "all", "runs": sum(r["runs"] for r in group)}
        for score in SCORES:
            for col in (score, f"{score}_std", f"base_{score}"):
                row[col] = mean_std([r[col] for r in group])[0]
        overall.append(row)
    return overall + per_class


def markdown(rows: list[dict], cells: list[dict], command: str, diverged: list[str] = ()) -> str:
    """results.md: the paper-shaped table (mean +- std across seeds) and the gap to the base model."""
    head = ("| method | optimizer | class | runs | FA (lower better) | retain acc | FID | gap FA | gap retain acc "
            "| gap FID |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['method']} | {r['optimizer']} | {r['class']} | {r['runs']} | "
                     f"{_num(r['forget_accuracy'], '.3f')} +- {_num(r['forget_accuracy_std'], '.3f')} | "
                     f"{_num(r['retain_accuracy'], '.3f')} +- {_num(r['retain_accuracy_std'], '.3f')} | "
                     f"{_num(r['fid'], '.2f')} +- {_num(r['fid_std'], '.2f')} | "
                     f"{_gap(r['forget_accuracy'], r['base_forget_accuracy'], '+.3f')} | "
                     f"{_gap(r['retain_accuracy'], r['base_retain_accuracy'], '+.3f')} | "
                     f"{_gap(r['fid'], r['base_fid'], '+.2f')} |")
    seeds = sorted({m["seed"] for m in cells})
    base = {}
    for m in cells:
        base.setdefault(str(m["forget_class"]), m["before"])
    base_lines = [f"| {c} | {_num(b['forget_accuracy'], '.3f')} | {_num(b['retain_accuracy'], '.3f')} | "
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
        *lines, "", f"Base model (before erasure), scored with the noise of seed {cells[0]['seed']}:", "",
        "| class | FA | retain acc | FID |", "|---|---|---|---|", *base_lines, "",
        *([f"Diverged cells (no after metrics, left out of the table): {len(diverged)}", ""]
          + [f"* {d}" for d in diverged] + [""] if diverged else [])])


def cell_folder(output: Path, method: str, optimizer: str, cls: str, seed: int) -> Path:
    return output / "cells" / f"{method}-{optimizer}-{cls.replace(' ', '_')}-s{seed}"


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="fid-bench", description=__doc__)
    parser.add_argument("spec", nargs="?", default="digits", help="benchmark spec: a name in configs/bench/ or a "
                        "YAML path (default: digits)")
    parser.add_argument("--classes", nargs="+", help="forget classes (overrides the spec)")
    parser.add_argument("--methods", nargs="+", help="base methods (overrides the spec)")
    parser.add_argument("--optimizers", nargs="+", choices=("dual", "shared"), help="(overrides the spec)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (overrides the spec)")
    parser.add_argument("--output", type=Path, default=Path("bench"), help="folder of the cells and tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every cell (after the spec's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config of every cell's settings as YAML (the first cell's, with the "
                             "method, optimizer and seed of each cell listed), and stop")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the spec and every cell's config, print the cells to run and their network "
                             "passes, and stop")
    parser.add_argument("--shard", metavar="i/N",
                        help="run only cells i, i + N, i + 2N, ... of the grid (e.g. a job array's index); claims keep "
                             "jobs apart in any case")
    parser.add_argument("--claim-timeout", type=float, default=6.0, metavar="HOURS",
                        help="a cell claimed by a job on another machine is taken over when nothing in its folder "
                             "changed for this long (default 6)")
    parser.add_argument("--aggregate", action="store_true",
                        help="run nothing: write the tables from the cells finished so far")
    cells, logs, diverged = [], {}, []
    main = processes().is_main_process
    try:
        args = parser.parse_args(argv)
        spec = read_spec(args.spec)
        for name in ("classes", "methods", "optimizers", "seeds"):
            if getattr(args, name):
                spec[name] = getattr(args, name)
        grid = list(itertools.product(spec["methods"], spec["optimizers"], map(str, spec["classes"]), spec["seeds"]))
        configs = [load_config(spec["config"], list(spec["set"]) + args.overrides + [
            f"method.name={method}", f"erase.optimizer={optimizer}", f"seed={seed}"])
            for method, optimizer, _, seed in grid]  # every cell's config checked before any cell runs
        classes = classes_of(configs[0])
        for cls in spec["classes"]:
            resolve_class(str(cls), classes)
        if args.print_config:
            print(f"# {len(grid)} cells: every (method, optimizer, class, seed) of methods {spec['methods']}, "
                  f"optimizers {spec['optimizers']}, classes {spec['classes']}, seeds {spec['seeds']}; the config of "
                  "the first:")
            print(config_text(configs[0]), end="")
            return 0
        if args.dry_run:
            todo = [c for c in grid if not (cell_folder(args.output, *c) / "metrics.json").exists()]
            shown = min(len(classes), configs[0].eval.grid_classes)
            total = [sum(p[i] for cfg in configs for p in passes(cfg, len(classes), shown)) for i in (1, 2)]
            print(f"dry run: {len(grid)} cells, {len(grid) - len(todo)} finished in {args.output}, {len(todo)} to run:")
            print("\n".join(f"  {m} / {o} / class {c} / seed {s}" for m, o, c, s in todo))
            print(f"network passes of all {len(grid)} cells (one pass = one image through the network; base "
                  f"evaluations are shared across cells of one class and seed): {total[0]:,d} forward, "
                  f"{total[1]:,d} backward")
            return 0
        check_writable(args.output, "--output")  # before the first cell, not after it
        shard = shard_of(args.shard) if args.shard else (0, 1)
        for i, ((method, optimizer, cls, seed), cfg) in enumerate(zip(grid, configs)):
            out = cell_folder(args.output, method, optimizer, cls, seed)
            saved = out / "config.yaml"
            if saved.exists() and yaml.safe_load(saved.read_text()) != to_dict(cfg):
                raise UsageError(f"cell {out} was run with another config: give a new --output for a changed "
                                 "benchmark")
            if (out / "metrics.json").exists() or (out / "diverged.txt").exists():  # an interrupted run resumes here
                continue
            if args.aggregate or i % shard[1] != shard[0] or not main_decides(
                    main and claim(out, args.claim_timeout * 3600)):
                continue  # another shard's, or another job's (claimed)
            if main:
                print(f"fid-bench: cell {i + 1}/{len(grid)}: {method} / {optimizer} / class {cls} / seed {seed}",
                      file=sys.stderr)
            try:
                run(cfg, cls, out, resume="latest", progress=not args.quiet)  # a killed cell continues
            except DivergenceError as e:  # a result too: the cell is reported, the benchmark goes on
                if main:
                    atomic_write_text(out / "diverged.txt", str(e))
    except (ConfigError, UsageError, EvalError) as e:
        if is_main_process():  # under a launcher every process fails alike: one line, not one per process
            print(f"fid-bench: error: {e}", file=sys.stderr)
        return 2
    processes().wait_for_everyone()
    pending = []
    for method, optimizer, cls, seed in grid:  # every finished cell, in the grid's order, whichever job ran it
        out = cell_folder(args.output, method, optimizer, cls, seed)
        name = f"{method} / {optimizer} / class {cls} / seed {seed}"
        logs[method, optimizer, cls, seed] = out / "log.jsonl"
        if (out / "metrics.json").exists():
            cells.append(json.loads((out / "metrics.json").read_text()))
        elif (out / "diverged.txt").exists():
            diverged.append(f"{name}: {(out / 'diverged.txt').read_text()}")
        else:
            pending.append(name)
    if pending and not args.aggregate:  # other jobs (or shards) run these: the last job to finish writes the tables
        if is_main_process():
            print(f"fid-bench: {len(pending)} of {len(grid)} cells are left to other jobs (--shard, or claimed in "
                  f"their folders); the job that finishes last writes the tables, or run this command with "
                  "--aggregate", file=sys.stderr)
        return 0
    if not cells:
        if is_main_process():
            print("fid-bench: error: every cell diverged: " + "; ".join(diverged), file=sys.stderr)
        return 1
    if not main:  # under a multi-process launch the main process writes the tables
        return 0
    rows = aggregate(cells)
    atomic_write_json(args.output / "results.json", {"spec": spec, "rows": rows, "cells": cells})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.output / "results.csv", buf.getvalue())
    command = "fid-bench " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, cells, command, diverged)
    if pending:
        table += "\n".join([f"Not finished when these tables were written: {len(pending)} cell(s)", ""] +
                            [f"* {name}" for name in pending]) + "\n"
    atomic_write_text(args.output / "results.md", table)
    plot_curves(logs, args.output)
    print(table)
    print(f"wrote {args.output}/: results.md, results.csv, results.json, forget_loss.png, grad_norms.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
