"""How far `eval.protocol=fast` (at most 50 sampler steps, a quarter of the samples) agrees with the
full protocol: every erased model of a finished `fid-bench` run (and its base model) is scored
again under the fast protocol, next to its full-protocol scores. Prints forget accuracy and FID
per cell, the cost of each protocol, and whether the fast protocol ranks the method x optimizer
rows as the full one does (Spearman's rho of the row means)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402
from dualerase.config import load_config  # noqa: E402
from dualerase.models.pretrained import load_model  # noqa: E402
from dualerase.runs.evaluation import evaluate, evaluation_config  # noqa: E402
from dualerase.runs.plan import passes  # noqa: E402
from dualerase.runs.workload import model_settings, prepare  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def eval_passes(cfg) -> int:
    """Network passes of one evaluation under the config's protocol."""
    return next(fwd for name, fwd, _ in passes(cfg, 10, 10) if name == "evaluation after")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("bench", type=Path,
                   help="a finished fid-bench output folder (cells/*/metrics.json and model/)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = sorted(c for c in (args.bench / "cells").iterdir() if (c / "metrics.json").exists())
    rows, w, seconds = [], None, []
    for cell in cells:
        full = json.loads((cell / "metrics.json").read_text())
        cfg = load_config(str(cell / "config.yaml"), ["eval.protocol=fast"])
        w = w or prepare(cfg, progress=False)
        fast_cfg = evaluation_config(cfg)
        model = load_model(cell / "model", **model_settings(cfg)).to(w.model.device)
        start = time.perf_counter()
        fast = evaluate(model, w, fast_cfg, full["forget_class"], progress=False)
        seconds.append(time.perf_counter() - start)
        base = evaluate(w.model, w, fast_cfg, full["forget_class"], progress=False)
        rows.append({"cell": cell.name, "method": full["method"], "optimizer": full["optimizer"],
                     "FA full": full["after"]["forget_accuracy"],
                     "FA fast": fast["forget_accuracy"],
                     "FID full": full["after"]["fid"], "FID fast": fast["fid"],
                     "base FA full": full["before"]["forget_accuracy"],
                     "base FA fast": base["forget_accuracy"],
                     "base FID full": full["before"]["fid"], "base FID fast": base["fid"]})
        print(f"{cell.name}: done", file=sys.stderr)
    first = load_config(str(cells[0] / "config.yaml"))
    print(header("eval.protocol fast vs full on the erased models of one fid-bench run",
                 {"bench": args.bench, "cells": len(rows), "threads": args.threads,
                  "full": f"{first.sample.scheduler} {first.sample.steps} steps, "
                          f"{first.eval.forget_samples} forget / "
                          f"{first.eval.retain_samples_per_class} per retained class",
                  "fast": f"{fast_cfg.sample.scheduler} {fast_cfg.sample.steps} steps, a quarter "
                          "of the samples"}))
    print(table(rows))
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["optimizer"]), []).append(r)
    means = {k: {m: statistics.mean(r[m] for r in v)
                 for m in ("FA full", "FA fast", "FID full", "FID fast")}
             for k, v in groups.items()}
    keys = sorted(means)
    full_cost, fast_cost = eval_passes(first), eval_passes(dataclasses.replace(
        first, eval=dataclasses.replace(first.eval, protocol="fast")))
    print()
    print(table([{"method x optimizer rows": len(keys),
                  "rho FID (row means)": spearman([means[k]["FID full"] for k in keys],
                                                  [means[k]["FID fast"] for k in keys]),
                  "rho FA (row means)": spearman([means[k]["FA full"] for k in keys],
                                                 [means[k]["FA fast"] for k in keys]),
                  "max |FA fast - FA full| (cells)": max(abs(r["FA fast"] - r["FA full"])
                                                         for r in rows),
                  "passes per evaluation full / fast": f"{full_cost:,} / {fast_cost:,} "
                                                       f"({full_cost / fast_cost:.0f}x)",
                  "fast evaluation s (median)": statistics.median(seconds)}]))


if __name__ == "__main__":
    main()
