"""One erase-class job, or several seeds of it: check the output folder, prepare, measure the base model, erase,
measure again, write every output."""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import yaml

from dualerase.config import Config, differing, saved_config, to_dict
from dualerase.data.classes import Classes, resolve_class
from dualerase.data.folders import check_cache, check_writable
from dualerase.errors import UsageError
from dualerase.integrations.card import CARD_CONFIG, model_card
from dualerase.integrations.claims import LOCK, locked
from dualerase.integrations.tracking import Trackers, check_trackers
from dualerase.launch import processes
from dualerase.models.pretrained import load_model
from dualerase.reports.plots import plot_forget_curve
from dualerase.reports.robustness import plot_relearn
from dualerase.reports.summary import sample_grid, save_image
from dualerase.runs.checkpoint import checkpoint_base, latest_checkpoint
from dualerase.runs.erasure import Erased, check_processes, check_pseudo_class, erase, save_model
from dualerase.runs.evaluation import (
    SCORES,
    base_grid_cache,
    evaluate,
    evaluate_base,
    evaluation_config,
    grid_classes,
    grid_images,
    protocol,
)
from dualerase.runs.plan import estimate, passes, passes_table
from dualerase.runs.sources import real_data
from dualerase.runs.workload import check_inputs, classes_of, model_settings, prepare
from dualerase.storage import atomic_write_json, atomic_write_text
from dualerase.unlearn.methods import METHODS


def check_output(output: Path, cfg: Config, overwrite: bool, resume: str | None) -> bool:
    """Decide what to do with an existing output folder; returns True when a finished run is there to report."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file: give a folder")
    if not output.exists() or not any(p.name != LOCK for p in output.iterdir()):  # new, or only our own lock
        return False
    if not (output / "config.yaml").exists():
        raise UsageError(f"{output} is not empty and holds no run: choose an empty or new --output folder")
    if overwrite:
        return False
    saved = output / "config.yaml"
    if resume:
        before, now = (saved_config(saved) if saved.exists() else None), to_dict(cfg)
        if saved.exists() and before != now:
            keys = ", ".join(f"{k} {a} -> {b}" for k, a, b in differing(before, now)[:3]) if before else \
                "a key this version no longer has"
            raise UsageError(f"{output} holds a run with another config ({keys}): resume with the same options (its "
                             f"own: --config {saved}), or pass --overwrite to start over")
        if resume != "latest" and not (Path(resume) / "done").exists():
            raise UsageError(f"--resume {resume} is not a finished checkpoint folder: pass --resume latest")
        return (output / "metrics.json").exists()
    if (output / "metrics.json").exists():
        raise UsageError(f"{output} already holds a finished run: pass --overwrite to replace it, or choose another "
                         "--output")
    raise UsageError(f"{output} holds an unfinished run: pass --resume latest to continue it, or --overwrite to start "
                     "over")


def check_same_base(output: Path, resume: str, model_id: str) -> None:
    """A resumed run continues from weights erased from one base model: refuse it if the model's files changed since
    (its id holds their content digest). Runs written before the record existed are not checked."""
    erased = output / "erase.json"
    checkpoint = latest_checkpoint(output) if resume == "latest" else Path(resume)
    recorded = json.loads(erased.read_text()).get("model") if erased.exists() else \
        checkpoint_base(checkpoint) if checkpoint is not None else None
    if recorded is not None and recorded != model_id:
        raise UsageError(f"--resume: {output} was erased from model {recorded}, but that model's files now give "
                         f"{model_id} (changed in place): resume with the model it started from, or pass --overwrite "
                         "to start over")


def check_run(cfg: Config, class_arg: str, output: Path) -> tuple[Classes, int]:
    """What a user gave, checked before any work (hours of evaluation on DiT-XL/2): the class, the settings, the output
    folder and the cache writable. Returns the model's classes and the forget class."""
    classes = classes_of(cfg)
    forget_class = resolve_class(class_arg, classes)
    check_pseudo_class(cfg, forget_class, len(classes))
    check_processes(cfg)
    check_writable(output, "--output")
    check_cache()
    return classes, forget_class


def dry_run(cfg: Config, class_arg: str, output: Path, trials: int, overwrite: bool, resume: str | None,
            report_to: list[str] = ()) -> str:
    """Every check `run` makes before work (class, settings, output folder, trackers), then what the run would do."""
    check_trackers(report_to)
    classes, forget_class = check_run(cfg, class_arg, output)
    check_inputs(cfg)  # what `prepare` checks first
    finished = check_output(output, cfg, overwrite, resume)
    shown = min(len(classes), cfg.eval.grid_classes)
    head = (f"dry run: erase class {forget_class} ({classes.short(forget_class)}) with {cfg.method.name}, "
            f"{cfg.erase.optimizer} optimizer(s), seed {cfg.seed}" + (f", {trials} trials" if trials > 1 else "") +
            f", into {output}" + (" (already finished: nothing would run)" if finished else ""))
    rows = passes(cfg, len(classes), shown)
    return (f"{head}\nnetwork passes per run (one pass = one image through the network):\n{passes_table(rows)}\n"
            f"{estimate(cfg, rows)}")


def score(cfg: Config, class_arg: str, progress: bool = True) -> dict:
    """The model's scores under the evaluation protocol, without erasing (`erase-class --score-only`): the same
    evaluation a run makes before erasing, cached the same way."""
    forget_class = resolve_class(class_arg, classes_of(cfg))
    check_cache()
    ecfg = evaluation_config(cfg)
    w = prepare(cfg, progress)
    return {"forget_class": forget_class, "class_name": w.classes.short(forget_class), "seed": cfg.seed,
            "model": w.model_id, "scores": evaluate_base(w, ecfg, forget_class, progress),
            "protocol": protocol(ecfg, w, forget_class)}


def start_output(output: Path, cfg: Config, overwrite: bool) -> None:
    """Create the output folder (emptied first with `overwrite`) and write its config.yaml; every process has checked
    the folder before the main one writes to it."""
    state = processes()
    state.wait_for_everyone()
    if state.is_main_process:
        for old in output.iterdir() if overwrite and output.exists() else ():  # the lock stays: we hold it
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.name != LOCK:
                old.unlink()
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    state.wait_for_everyone()


def run(cfg: Config, class_arg: str, output: Path, *, overwrite: bool = False, resume: str | None = None,
        progress: bool = True, report_to: list[str] = ()) -> dict:
    """The whole job: prepare, measure the base model, erase, measure again, write the outputs.

    Killed at any point, the same call with `resume` continues: the prepared mask, the latest erasure checkpoint and
    every finished batch of samples are reused. A diverged erasure writes no "after" metrics. Under a multi-process
    launch every process runs this; work is shared and only the main process writes."""
    progress = progress and processes().is_main_process
    _, forget_class = check_run(cfg, class_arg, output)
    check_trackers(report_to)
    with locked(output):  # one run writes a folder at a time: a second one is refused here, before any work
        return _run(cfg, forget_class, output, overwrite=overwrite, resume=resume, progress=progress,
                    report_to=report_to)


def _run(cfg: Config, forget_class: int, output: Path, *, overwrite: bool, resume: str | None, progress: bool,
         report_to: list[str]) -> dict:
    """`run` once its checks pass and it holds the output folder's lock."""
    state = processes()
    main = state.is_main_process
    if check_output(output, cfg, overwrite, resume):
        return json.loads((output / "metrics.json").read_text())
    ecfg = evaluation_config(cfg)  # the evaluation's sampler and sample counts (eval.protocol)
    # The workload: base model, scorer and real data (bad data fails here, before any output is touched).
    t_start = time.perf_counter()
    w = prepare(cfg, progress)
    if resume:
        check_same_base(output, resume, w.model_id)  # before the data and the base model's evaluation
    real = real_data(w, cfg, forget_class, progress)
    t_prepared = time.perf_counter()
    # The base model's scores (cached across runs).
    before = evaluate_base(w, ecfg, forget_class, progress, job=output)
    t_before = time.perf_counter()
    start_output(output, cfg, overwrite)
    trackers = Trackers(list(report_to) if main else [], output, cfg, run_name=output.name)
    # Erasure (or its result, when a resumed run had finished it).
    if resume and (output / "erase.json").exists():
        done = json.loads((output / "erase.json").read_text())
        erased = Erased(load_model(output / "model", **model_settings(cfg)).to(state.device),
                        [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()],
                        done["timings"], done["mask_kept_fraction"])
    else:
        erased = erase(w, cfg, forget_class, real, output, resume=resume, progress=progress, trackers=trackers)
        if main:
            save_model(erased.model, w, output / "model")
            atomic_write_json(output / "erase.json", {"model": w.model_id, "timings": erased.timings,
                                                      "mask_kept_fraction": erased.mask_kept_fraction})
        state.wait_for_everyone()
    t_erased = time.perf_counter()
    # The erased model's scores, and its samples as files.
    after = evaluate(erased.model, w, ecfg, forget_class, progress, desc="after", cache_dir=output / "samples-after",
                     save_to=output / "samples" if cfg.eval.save_samples else None)
    t_after = time.perf_counter()
    # The before/after grid, then metrics.json last: its presence marks a finished run.
    shown = grid_classes(w, ecfg, forget_class)
    before_grid, grid_labels = grid_images(w.model, w, ecfg, shown, progress, base_grid_cache(w, ecfg, shown))
    after_grid, _ = grid_images(erased.model, w, ecfg, shown, progress, output / "samples-grid-after")
    metrics = {
        "forget_class": forget_class,
        "class_name": w.classes.short(forget_class),
        "method": cfg.method.name,
        "optimizer": cfg.erase.optimizer,
        "seed": cfg.seed,
        "outer_steps": len(erased.log),  # fewer than erase.outer_steps when the forget-accuracy probe stopped it
        "outer_steps_limit": cfg.erase.outer_steps,
        "model": w.model_id,
        "before": before,
        "after": after,
        "protocol": protocol(ecfg, w, forget_class),
        "timings": {"prepare_s": t_prepared - t_start, "before_eval_s": t_before - t_prepared, **erased.timings,
                    "after_eval_s": t_after - t_erased, "total_s": time.perf_counter() - t_start},
        "mask_kept_fraction": erased.mask_kept_fraction,
        "loss_reductions": METHODS[cfg.method.name].reductions(cfg.method),  # over pixels: the published scale
        "final_log": erased.log[-1] if erased.log else None,
    }
    if main:
        save_image(sample_grid({"before": before_grid, "after": after_grid}, grid_labels, w.class_names,
                               marked=forget_class), output / "grid.png")
        if cfg.erase.stop_at_forget_accuracy is not None:
            plot_forget_curve(erased.log, cfg.erase.stop_at_forget_accuracy, cfg.erase.outer_steps,
                              output / "forget_curve.png")
        plot_relearn({"": {"before": [before.get("robustness", {}).get("relearn", {})],
                           "after": [after.get("robustness", {}).get("relearn", {})]}}, output / "relearn_curve.png")
        model_card(metrics, pipeline=w.vae is not None, num_classes=w.num_classes).save(output / "model" / "README.md")
        shutil.copyfile(output / "config.yaml", output / "model" / CARD_CONFIG)  # uploaded with the card it links
        for stale in output.glob("checkpoint-*"):  # the finished model supersedes them
            shutil.rmtree(stale, ignore_errors=True)
        atomic_write_json(output / "metrics.json", metrics)
        trackers.log({"before": {k: before[k] for k in SCORES}, "after": {k: after[k] for k in SCORES}},
                     step=len(erased.log))
        trackers.finish()
    state.wait_for_everyone()
    return metrics if main else json.loads((output / "metrics.json").read_text())


RUN_FILES = ("metrics.json", "model/", "grid.png", "config.yaml", "log.jsonl", "forget_curve.png", "relearn_curve.png")


def written(output: Path, names: tuple[str, ...] = RUN_FILES) -> str:
    """What a finished command left in `output`, for its last line: the files of `names` there, and a run's trial
    folders."""
    return ", ".join([n for n in names if (output / n).exists()] + sorted(f"{p.name}/"
                                                                          for p in output.glob("trial-s*")))


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std of the values that are there (a non-finite FID is stored as null); None when none is, and
    a std of None from a single value (one seed has no spread to report, not a spread of 0)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate_trials(runs: list[dict]) -> dict:
    """One metrics record from several seeds: the single-run keys hold means, `std` sample stds, `trials` each run."""
    first = runs[0]
    metrics = {k: first[k] for k in ("forget_class", "class_name", "method", "optimizer", "seed", "outer_steps",
                                      "model")}
    metrics["seeds"] = [r["seed"] for r in runs]
    metrics["std"] = {}
    for side in ("before", "after"):
        metrics[side], metrics["std"][side] = {}, {}
        for key in SCORES:
            values = [r[side].get(key) for r in runs]  # a non-finite FID is null; older runs lack newer scores
            metrics[side][key], metrics["std"][side][key] = mean_std(values)
            if None in values and key == "fid":  # forget_not_a_class is null by design without that class
                metrics[side][f"{key}_error"] = (f"not finite in {values.count(None)} of {len(runs)} trials "
                                                 "(see trials); the mean and std are over the others")
    metrics["protocol"] = {**first["protocol"], "seed": metrics["seeds"]}
    metrics["timings"] = {k: sum(r["timings"][k] for r in runs) for k in first["timings"]}
    metrics["timings"]["erase_steps_per_s"] = statistics.fmean(r["timings"]["erase_steps_per_s"] for r in runs)
    metrics["trials"] = runs
    return metrics


def run_trials(cfg: Config, class_arg: str, output: Path, trials: int = 1, *, overwrite: bool = False,
               resume: str | None = None, progress: bool = True, report_to: list[str] = ()) -> dict:
    """K runs with seeds seed, seed+1, ..., each in `output/trial-s<seed>`; `output/metrics.json` aggregates them."""
    if trials == 1:
        return run(cfg, class_arg, output, overwrite=overwrite, resume=resume, progress=progress,
                   report_to=report_to)
    state = processes()
    resolve_class(class_arg, classes_of(cfg))
    check_processes(cfg)
    check_writable(output, "--output")
    with locked(output):
        if check_output(output, cfg, overwrite, resume):
            return json.loads((output / "metrics.json").read_text())
        start_output(output, cfg, overwrite)
        runs = [run(dataclasses.replace(cfg, seed=seed), class_arg, output / f"trial-s{seed}", resume="latest",
                    progress=progress, report_to=report_to) for seed in range(cfg.seed, cfg.seed + trials)]
        metrics = aggregate_trials(runs)
        if state.is_main_process:
            atomic_write_json(output / "metrics.json", metrics)
        state.wait_for_everyone()
        return metrics
