"""fid-bench: the method x optimizer x class x seed table (forget accuracy, retain accuracy, FID, spread over seeds)."""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import statistics
import sys
from pathlib import Path

from eval.report import atomic_write_json, atomic_write_text, protocol_line
from pipelines.config import ConfigError, load_config
from pipelines.erase_class import UsageError, run

METRICS = ("forget_accuracy", "retain_accuracy", "fid")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (method, optimizer): mean and std over classes and seeds, and the base model's means."""
    rows = []
    for (method, optimizer), group in itertools.groupby(
            sorted(cells, key=lambda m: (m["method"], m["optimizer"])), key=lambda m: (m["method"], m["optimizer"])):
        group = list(group)
        row = {"method": method, "optimizer": optimizer, "cells": len(group)}
        for key in METRICS:
            row[key], row[f"{key}_std"] = _mean_std([m["after"][key] for m in group])
            row[f"base_{key}"] = statistics.fmean(m["before"][key] for m in group)
        rows.append(row)
    return rows


def markdown(rows: list[dict], cells: list[dict]) -> str:
    """The table shaped like the paper's: mean +- std over classes and seeds, and the base model beside it."""
    lines = ["| method | optimizer | runs | FA (lower better) | retain acc | FID | base FA | base retain acc | base FID |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['optimizer']} | {r['cells']} | "
                     f"{r['forget_accuracy']:.3f} +- {r['forget_accuracy_std']:.3f} | "
                     f"{r['retain_accuracy']:.3f} +- {r['retain_accuracy_std']:.3f} | "
                     f"{r['fid']:.2f} +- {r['fid_std']:.2f} | {r['base_forget_accuracy']:.3f} | "
                     f"{r['base_retain_accuracy']:.3f} | {r['base_fid']:.2f} |")
    classes = sorted({m["forget_class"] for m in cells})
    seeds = sorted({m["seed"] for m in cells})
    proto = protocol_line({**cells[0]["protocol"], "seed": ", ".join(map(str, seeds))})
    return ("\n".join(lines) + f"\n\nClasses {classes}, seeds {seeds}; mean +- sample std over classes and seeds.\n"
            f"Protocol: {proto}.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fid-bench", description=__doc__)
    parser.add_argument("--config", default="digits", help="preset name or YAML path (default: digits)")
    parser.add_argument("--classes", nargs="+", default=["3"], help="forget classes (default: 3)")
    parser.add_argument("--methods", nargs="+", default=["sfron"], help="base methods (default: sfron)")
    parser.add_argument("--optimizers", nargs="+", default=["dual", "shared"], choices=("dual", "shared"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    parser.add_argument("--output", type=Path, default=Path("bench"), help="folder of the cells and tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cells = []
    try:
        for method, optimizer, cls, seed in itertools.product(args.methods, args.optimizers, args.classes, args.seeds):
            cfg = load_config(args.config, args.overrides + [f"method.name={method}", f"erase.optimizer={optimizer}",
                                                             f"seed={seed}"])
            out = args.output / "cells" / f"{method}-{optimizer}-{cls.replace(' ', '_')}-s{seed}"
            if (out / "metrics.json").exists():  # finished earlier: an interrupted benchmark resumes here
                cells.append(json.loads((out / "metrics.json").read_text()))
                continue
            print(f"fid-bench: {method} / {optimizer} / class {cls} / seed {seed}", file=sys.stderr)
            cells.append(run(cfg, cls, out, progress=not args.quiet))
    except (ConfigError, UsageError) as e:
        print(f"fid-bench: error: {e}", file=sys.stderr)
        return 2
    rows = aggregate(cells)
    atomic_write_json(args.output / "results.json", {"rows": rows, "cells": cells})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.output / "results.csv", buf.getvalue())
    table = markdown(rows, cells)
    atomic_write_text(args.output / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
