"""Several trials of one job in one record: the mean and sample std of every score over seeds."""
from __future__ import annotations

import statistics

from dualerase.runs.evaluation import SCORES


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std of the values that are there (a non-finite FID is stored as null).

    None when none is there, and a std of None from a single value (one seed has no spread to
    report, not a spread of 0)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate_trials(runs: list[dict]) -> dict:
    """One metrics record from several seeds: means, `std` sample stds, `trials` each run."""
    first = runs[0]
    metrics = {k: first[k] for k in ("forget_class", "class_name", "method", "optimizer", "seed",
                                      "outer_steps", "model")}
    metrics["seeds"] = [r["seed"] for r in runs]
    metrics["std"] = {}
    for side in ("before", "after"):
        metrics[side], metrics["std"][side] = {}, {}
        for key in SCORES:
            # a non-finite FID is null; older runs lack newer scores
            values = [r[side].get(key) for r in runs]
            metrics[side][key], metrics["std"][side][key] = mean_std(values)
            # forget_not_a_class is null by design without that class: FID only
            if None in values and key == "fid":
                metrics[side][f"{key}_error"] = (f"not finite in {values.count(None)} of "
                                                 f"{len(runs)} trials (see trials); the mean and "
                                                 "std are over the others")
    metrics["protocol"] = {**first["protocol"], "seed": metrics["seeds"]}
    metrics["timings"] = {k: sum(r["timings"][k] for r in runs) for k in first["timings"]}
    metrics["timings"]["erase_steps_per_s"] = statistics.fmean(r["timings"]["erase_steps_per_s"]
                                                               for r in runs)
    metrics["trials"] = runs
    return metrics
