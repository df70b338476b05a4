"""One erase-class job, or several seeds of it: check the output folder, prepare, measure the base
model, erase, measure again, write every output."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import yaml

from dualerase.config import Config, to_dict
from dualerase.data.classes import Classes, resolve_class
from dualerase.data.folders import check_cache, check_writable
from dualerase.integrations.card import CARD_CONFIG, model_card
from dualerase.integrations.claims import LOCK, locked
from dualerase.integrations.tracking import Trackers, check_trackers
from dualerase.launch import processes
from dualerase.models.pretrained import load_model
from dualerase.reports.plots import plot_forget_curve
from dualerase.reports.robustness import plot_relearn
from dualerase.reports.summary import sample_grid, save_image
from dualerase.runs.checkpoint import check_output, check_resume
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
from dualerase.runs.trials import aggregate_trials
from dualerase.runs.workload import (
    Job,
    RealData,
    check_inputs,
    classes_of,
    model_settings,
    prepare,
)
from dualerase.storage import atomic_write_json, atomic_write_text, drop_damaged, remove_temporaries
from dualerase.unlearn.methods import METHODS


def check_run(cfg: Config, class_arg: str, output: Path) -> tuple[Classes, int]:
    """Check what a user gave before any work: class, settings, output folder, a writable cache.

    Hours of evaluation on DiT-XL/2 must not end in a refusal. Returns the model's classes and the
    forget class."""
    classes = classes_of(cfg)
    forget_class = resolve_class(class_arg, classes)
    check_pseudo_class(cfg, forget_class, len(classes))
    check_processes(cfg)
    check_writable(output, "--output")
    check_cache()
    return classes, forget_class


def dry_run(cfg: Config, class_arg: str, output: Path, trials: int, overwrite: bool,
            resume: str | None, report_to: list[str] = ()) -> str:
    """Every check `run` makes before work (class, settings, output, trackers), then its plan."""
    check_trackers(report_to)
    classes, forget_class = check_run(cfg, class_arg, output)
    check_inputs(cfg)  # what `prepare` checks first
    finished = check_output(output, cfg, overwrite, resume)
    shown = min(len(classes), cfg.eval.grid_classes)
    head = (f"dry run: erase class {forget_class} ({classes.short(forget_class)}) with "
            f"{cfg.method.name}, {cfg.erase.optimizer} optimizer(s), seed {cfg.seed}"
            + (f", {trials} trials" if trials > 1 else "") + f", into {output}"
            + (" (already finished: nothing would run)" if finished else ""))
    rows = passes(cfg, len(classes), shown)
    return (f"{head}\nnetwork passes per run (one pass = one image through the network):\n"
            f"{passes_table(rows)}\n{estimate(cfg, rows)}")


def score(cfg: Config, class_arg: str, progress: bool = True) -> dict:
    """The model's scores under the evaluation protocol, without erasing (`--score-only`).

    The same evaluation a run makes before erasing, cached the same way."""
    forget_class = resolve_class(class_arg, classes_of(cfg))
    check_cache()
    eval_cfg = evaluation_config(cfg)
    w = prepare(cfg, progress)
    return {"forget_class": forget_class, "class_name": w.classes.short(forget_class),
            "seed": cfg.seed, "model": w.model_id,
            "scores": evaluate_base(w, eval_cfg, forget_class, progress),
            "protocol": protocol(eval_cfg, w, forget_class)}


def start_output(output: Path, cfg: Config, overwrite: bool) -> None:
    """Create the output folder (emptied first with `overwrite`) and write its config.yaml.

    Every process has checked the folder before the main one writes to it."""
    state = processes()
    state.wait_for_everyone()
    if state.is_main_process:
        for old in output.iterdir() if overwrite and output.exists() else ():
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.name != LOCK:  # the lock stays: we hold it
                old.unlink()
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    state.wait_for_everyone()


def run(cfg: Config, class_arg: str, output: Path, *, overwrite: bool = False,
        resume: str | None = None, progress: bool = True, report_to: list[str] = ()) -> dict:
    """The whole job: prepare, measure the base model, erase, measure again, write the outputs.

    Killed at any point, the same call with `resume` continues: the prepared mask, the latest
    erasure checkpoint and every finished batch of samples are reused. A diverged erasure writes
    no "after" metrics. Under a multi-process launch every process runs this; work is shared and
    only the main process writes.

    Returns:
        The run's metrics, as written to output/metrics.json."""
    progress = progress and processes().is_main_process
    _, forget_class = check_run(cfg, class_arg, output)
    check_trackers(report_to)
    # one run writes a folder at a time: a second one is refused here, before any work
    with locked(output):
        try:
            return _run(cfg, forget_class, output, overwrite=overwrite, resume=resume,
                        progress=progress, report_to=report_to)
        except BaseException:  # a failed write (a full disk) leaves no temporary file or folder
            if processes().is_main_process:
                remove_temporaries(output)
            raise


def _run(cfg: Config, forget_class: int, output: Path, *, overwrite: bool, resume: str | None,
         progress: bool, report_to: list[str]) -> dict:
    """`run` once its checks pass and it holds the output folder's lock, phase by phase."""
    main = processes().is_main_process
    if check_output(output, cfg, overwrite, resume):
        return json.loads((output / "metrics.json").read_text())
    clock = {"start": time.perf_counter()}
    # The workload: base model, scorer and real data (bad data fails here, before any output).
    job = Job(prepare(cfg, progress), cfg, forget_class, progress)
    if resume:  # before the data and the base model's evaluation
        check_resume(output, resume, job.w.model_id)
    if main:  # a damaged batch of samples kept from an earlier try is drawn again
        drop_damaged(output.glob("samples-*/**/batch-*.pt"))
    real = real_data(job.w, cfg, forget_class, progress)  # the others wait for the main process
    clock["prepared"] = time.perf_counter()
    # The base model's scores (cached across runs), with the evaluation's sampler and counts.
    eval_cfg = evaluation_config(cfg)
    before = evaluate_base(job.w, eval_cfg, forget_class, progress, job=output)
    clock["before"] = time.perf_counter()
    start_output(output, cfg, overwrite)
    trackers = Trackers(list(report_to) if main else [], output, cfg, run_name=output.name)
    # Erasure (or its result, when a resumed run had finished it).
    erased = _erasure(job, real, output, resume, trackers)
    clock["erased"] = time.perf_counter()
    # The erased model's scores, and its samples as files.
    after = evaluate(erased.model, job.w, eval_cfg, forget_class, progress, desc="after",
                     cache_dir=output / "samples-after",
                     save_to=output / "samples" if cfg.eval.save_samples else None)
    clock["after"] = time.perf_counter()
    # The before/after grid, then metrics.json last: its presence marks a finished run.
    grid = _grid(job, eval_cfg, erased.model, output)
    metrics = _metrics(job, eval_cfg, erased, before, after, clock)
    if main:
        _write_outputs(job, output, metrics, erased.log, grid, trackers)
    processes().wait_for_everyone()
    return metrics if main else json.loads((output / "metrics.json").read_text())


def _erasure(job: Job, real: RealData, output: Path, resume: str | None,
             trackers: Trackers) -> Erased:
    """Erase and save the model and erase.json; or read them back, if a resumed run got that far."""
    state = processes()
    if resume and (output / "erase.json").exists():
        done = json.loads((output / "erase.json").read_text())
        model = load_model(output / "model", **model_settings(job.cfg)).to(state.device)
        log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
        return Erased(model, log, done["timings"], done["mask_kept_fraction"])
    erased = erase(job.w, job.cfg, job.forget_class, real, output, resume=resume,
                   progress=job.progress, trackers=trackers)
    if state.is_main_process:
        save_model(erased.model, job.w, output / "model")
        atomic_write_json(output / "erase.json", {"model": job.w.model_id,
                                                  "timings": erased.timings,
                                                  "mask_kept_fraction": erased.mask_kept_fraction})
    state.wait_for_everyone()
    return erased


def _grid(job: Job, eval_cfg: Config, erased_model, output: Path) -> tuple:
    """The before/after grid's images by side, and its labels; the base model's are cached."""
    w = job.w
    shown = grid_classes(w, eval_cfg, job.forget_class)
    before, labels = grid_images(w.model, w, eval_cfg, shown, job.progress,
                                 base_grid_cache(w, eval_cfg, shown))
    after, _ = grid_images(erased_model, w, eval_cfg, shown, job.progress,
                           output / "samples-grid-after")
    return {"before": before, "after": after}, labels


def _metrics(job: Job, eval_cfg: Config, erased: Erased, before: dict, after: dict,
             clock: dict) -> dict:
    """The run's metrics.json record; `clock` holds the perf_counter reading of each phase's end."""
    cfg, w = job.cfg, job.w
    return {
        "forget_class": job.forget_class,
        "class_name": w.classes.short(job.forget_class),
        "method": cfg.method.name,
        "optimizer": cfg.erase.optimizer,
        "seed": cfg.seed,
        # fewer than erase.outer_steps when the forget-accuracy probe stopped it
        "outer_steps": len(erased.log),
        "outer_steps_limit": cfg.erase.outer_steps,
        "model": w.model_id,
        "before": before,
        "after": after,
        "protocol": protocol(eval_cfg, w, job.forget_class),
        "timings": {"prepare_s": clock["prepared"] - clock["start"],
                    "before_eval_s": clock["before"] - clock["prepared"], **erased.timings,
                    "after_eval_s": clock["after"] - clock["erased"],
                    "total_s": time.perf_counter() - clock["start"]},
        "mask_kept_fraction": erased.mask_kept_fraction,
        # over pixels: the published scale
        "loss_reductions": METHODS[cfg.method.name].reductions(cfg.method),
        "final_log": erased.log[-1] if erased.log else None,
    }


def _write_outputs(job: Job, output: Path, metrics: dict, log: list[dict], grid: tuple,
                   trackers: Trackers) -> None:
    """The main process's files: grid, curves, model card, then metrics.json last; trackers."""
    cfg, w, (images, labels) = job.cfg, job.w, grid
    before, after = metrics["before"], metrics["after"]
    save_image(sample_grid(images, labels, w.class_names, marked=job.forget_class),
               output / "grid.png")
    if cfg.erase.stop_at_forget_accuracy is not None:
        plot_forget_curve(log, cfg.erase.stop_at_forget_accuracy, cfg.erase.outer_steps,
                          output / "forget_curve.png")
    plot_relearn({"": {"before": [before.get("robustness", {}).get("relearn", {})],
                       "after": [after.get("robustness", {}).get("relearn", {})]}},
                 output / "relearn_curve.png")
    model_card(metrics, pipeline=w.vae is not None,
               num_classes=w.num_classes).save(output / "model" / "README.md")
    # uploaded with the card that links it
    shutil.copyfile(output / "config.yaml", output / "model" / CARD_CONFIG)
    for stale in output.glob("checkpoint-*"):  # the finished model supersedes them
        shutil.rmtree(stale, ignore_errors=True)
    atomic_write_json(output / "metrics.json", metrics)
    trackers.log({"before": {k: before[k] for k in SCORES}, "after": {k: after[k] for k in SCORES}},
                 step=len(log))
    trackers.finish()


RUN_FILES = ("metrics.json", "model/", "grid.png", "config.yaml", "log.jsonl", "forget_curve.png",
             "relearn_curve.png")


def written(output: Path, names: tuple[str, ...] = RUN_FILES) -> str:
    """What a finished command left in `output`: the files of `names` there, and trial folders."""
    trials = sorted(f"{p.name}/" for p in output.glob("trial-s*"))
    return ", ".join([n for n in names if (output / n).exists()] + trials)


def run_trials(cfg: Config, class_arg: str, output: Path, trials: int = 1, *,
               overwrite: bool = False, resume: str | None = None, progress: bool = True,
               report_to: list[str] = ()) -> dict:
    """K runs with seeds seed, seed+1, ..., each in `output/trial-s<seed>`.

    Returns:
        `run`'s metrics for one trial; for several, `aggregate_trials` of them, which is written
        to output/metrics.json."""
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
        runs = [run(dataclasses.replace(cfg, seed=seed), class_arg, output / f"trial-s{seed}",
                    resume="latest", progress=progress, report_to=report_to)
                for seed in range(cfg.seed, cfg.seed + trials)]
        metrics = aggregate_trials(runs)
        if state.is_main_process:
            atomic_write_json(output / "metrics.json", metrics)
        state.wait_for_everyone()
        return metrics
