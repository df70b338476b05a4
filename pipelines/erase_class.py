"""erase-class: erase one class from a class-conditional DiT, measure the model before and after, save everything."""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from configs import preset_names
from erase import DivergenceError, make_optimizers, unlearn
from erase.dualoptim import batches_per_step
from erase.methods import METHODS, make_method
from erase.saliency import mask_fraction
from eval.imagenet import EvalError
from eval.report import sample_grid, save_image, save_samples, summary
from eval.storage import atomic_path, atomic_write_json, atomic_write_text, cache_root, fingerprint, replace_folder
from pipelines.checkpoint import PartialSums, latest_checkpoint, load_checkpoint, save_checkpoint
from pipelines.classes import resolve_class
from pipelines.config import CommandParser, Config, ConfigError, UsageError, load_config, to_dict
from pipelines.data import check_writable, encode
from pipelines.dit import DiTLoss, describe_model, drop_labels, learns_sigma, make_scheduler, separate_copies
from pipelines.pretrained import load_model, save_pipeline, write_record
from pipelines.sampling import class_labels, from_uint8, sample, seeded_generator, to_uint8
from pipelines.workload import Workload, classes_of, is_main_process, model_settings, prepare, processes


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, label_dropout: float = 0.0,
            null_class: int = -1, start: int = 0):
    """Endless random batches (x, y, per-sample noise seeds) drawn with replacement, labels dropped to `null_class`.

    Batch i depends only on (seed, i), so a resumed run continues with exactly the batches it would have seen."""
    for i in itertools.count(start):
        gen = seeded_generator(seed, i)
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        seeds = torch.randint(0, 2**62, (batch_size,), generator=gen)
        yield x[idx], drop_labels(y[idx], label_dropout, null_class, gen), seeds


def shard(stream, rank: int, world: int):
    """This process's contiguous share of every batch (data parallelism; the global batch is the configured one)."""
    for batch in stream:
        n = len(batch[0]) // world
        yield tuple(t[rank * n:(rank + 1) * n] for t in batch)


def autocast(cfg: Config):
    """bf16 autocast on the process's device when compute.mixed_precision is bf16 (weights stay float32)."""
    if cfg.compute.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(processes().device.type, dtype=torch.bfloat16)


def generate(model, w: Workload, cfg: Config, labels: torch.Tensor, *, seed: int, cache_dir: Path | None,
             desc: str, progress: bool, decode: bool = True, everywhere: bool = False) -> torch.Tensor | None:
    """Samples for `labels`, sharded across processes by batch: each process draws its batches into `cache_dir`, then
    the main process (every process with `everywhere`) reads them all back; the others get None. One process needs no
    cache_dir. Without `decode`, a latent model's samples stay latents (kept as floats)."""
    state = processes()
    kwargs = dict(num_steps=cfg.sample.steps, guidance=cfg.sample.guidance, seed=seed, batch_size=cfg.sample.batch_size,
                  vae=w.vae if decode else None, desc=desc, cache_dir=cache_dir, quantize=decode,
                  guidance_channels=cfg.sample.guidance_channels)
    scheduler = make_scheduler(timestep_spacing=cfg.sample.timestep_spacing)
    with autocast(cfg):
        images = sample(model, scheduler, labels, progress=progress, shard=(state.process_index,
                        state.num_processes), **kwargs)
    if state.num_processes == 1:
        return images
    state.wait_for_everyone()
    if not (everywhere or state.is_main_process):
        return None
    return sample(model, scheduler, labels, progress=False, **kwargs)  # every batch is on disk: reads only


def protocol(cfg: Config, w: Workload, forget_class: int) -> dict:
    """Everything needed to reproduce or compare the numbers."""
    return {
        "sampler": "DDPM (diffusers DDPMScheduler, "
                   f"{'learned variance' if learns_sigma(w.model) else 'fixed variance: the model predicts none'})",
        "steps": cfg.sample.steps,
        "guidance": cfg.sample.guidance,
        "guidance_channels": cfg.sample.guidance_channels or "all",
        "timestep_spacing": cfg.sample.timestep_spacing,
        **describe_model(w.model),  # embedders, timestep_shift, norm_eps, model_parameters
        "precision": "bf16 autocast" if cfg.compute.mixed_precision == "bf16" else "float32",
        "forget_samples": cfg.eval.forget_samples,
        "retain_samples": len(retain_labels(w, cfg, forget_class)),
        "retain_labels": f"{cfg.eval.retain_samples_per_class} per retained class" if cfg.eval.retain_samples is None
        else "drawn uniformly at random from the retained classes",
        **w.scorer.describe(forget_class),
        "seed": cfg.seed,
    }


def retain_labels(w: Workload, cfg: Config, forget_class: int) -> torch.Tensor:
    """Labels of the retain samples: eval.retain_samples_per_class of each other class, or eval.retain_samples drawn
    uniformly at random (seeded) from the other classes."""
    if cfg.eval.retain_samples is None:
        return class_labels(w.num_classes, cfg.eval.retain_samples_per_class, exclude=forget_class)
    gen = torch.Generator().manual_seed(cfg.seed + 8)
    labels = torch.randint(0, w.num_classes - 1, (cfg.eval.retain_samples,), generator=gen)
    return labels + (labels >= forget_class).long()  # skip the forget class


def evaluate(model, w: Workload, cfg: Config, forget_class: int, progress: bool = True, desc: str = "",
             cache_dir: Path | None = None, save_to: Path | None = None) -> dict:
    """Forget accuracy, the forget class's mean probability and the entropy of the predicted distribution on its
    samples (as the published evaluator reports), retain accuracy (per class too) and FID of the retained classes'
    samples.

    Samples are scored at 8-bit precision; with `cache_dir` finished sample batches survive a kill; with `save_to`
    they are also written as PNG folders and ADM-style .npz files (`save_samples`). Every process samples its share;
    the main process scores (the others get None)."""
    fl = class_labels(w.num_classes, cfg.eval.forget_samples, only=forget_class)
    rl = retain_labels(w, cfg, forget_class)
    labels = torch.cat([fl, rl])
    images = generate(model, w, cfg, labels, seed=cfg.seed, cache_dir=cache_dir, desc=f"sample {desc}",
                      progress=progress)
    if images is None:  # not the main process, which scores
        return None
    images = to_uint8(images)
    probs = w.scorer.probabilities(from_uint8(images))
    pred = probs.argmax(1)
    forget = probs[:len(fl)]
    per_class = {str(c): (pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()}
    if save_to is not None:
        save_samples(save_to, {"forget": (images[:len(fl)], fl), "retain": (images[len(fl):], rl)})
    fid = w.scorer.fid(images[len(fl):], forget_class)
    scores = {
        "forget_accuracy": (pred[:len(fl)] == forget_class).float().mean().item(),
        "forget_probability": forget[:, forget_class].mean().item(),
        "forget_entropy": torch.special.entr(forget).sum(1).mean().item(),  # nats
        "retain_accuracy": (pred[len(fl):] == rl).float().mean().item(),
        "fid": fid if math.isfinite(fid) else None,  # JSON has no inf or nan: null, and the reason next to it
        "per_class_accuracy": per_class,
    }
    if not math.isfinite(fid):
        scores["fid_error"] = (f"not finite (torch-fidelity gave {fid}): the features of the samples or of the "
                               "reference are degenerate, e.g. NaN or constant images, or too few distinct samples")
    return scores


def evaluate_base(w: Workload, cfg: Config, forget_class: int, progress: bool = True,
                  job: Path | None = None) -> dict:
    """The base model's scores, cached by model, protocol, seed and class: they do not change between erasures.
    Samples in progress are kept per `job` (the output folder), so that concurrent jobs never share a folder."""
    key = fingerprint({"model": w.model_id, "protocol": protocol(cfg, w, forget_class), "class": forget_class,
                       "sample": dataclasses.asdict(cfg.sample), "eval": dataclasses.asdict(cfg.eval),
                       "scorer": w.scorer.key, "scored_at": "uint8", "scores": SCORES})
    path = cache_root() / "evals" / f"{key}.json"
    if not main_decides(path.exists()):
        samples = path.with_name(f"{key}-{fingerprint(str((job or Path()).resolve()))}")
        scores = evaluate(w.model, w, cfg, forget_class, progress, desc="before", cache_dir=samples)
        if processes().is_main_process:
            atomic_write_json(path, scores)
            shutil.rmtree(samples, ignore_errors=True)
        processes().wait_for_everyone()
    return json.loads(path.read_text())


def main_decides(value):
    """The main process's value on every process (so that all take the same branch, and meet at the same barriers)."""
    if processes().num_processes == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def grid_classes(w: Workload, cfg: Config, forget_class: int) -> list[int]:
    """The classes grid.png shows: all of them, or the forget class and the lowest others up to eval.grid_classes."""
    if w.num_classes <= cfg.eval.grid_classes:
        return list(range(w.num_classes))
    return sorted([forget_class] + [c for c in range(w.num_classes) if c != forget_class][:cfg.eval.grid_classes - 1])


def grid_images(model, w: Workload, cfg: Config, classes: list[int], progress: bool = True,
                cache_dir: Path | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`grid_per_class` samples of each class, with the same noise for every model (so rows compare); the images
    only on the main process, which draws the grid."""
    labels = torch.tensor(classes).repeat_interleave(cfg.eval.grid_per_class)
    images = generate(model, w, cfg, labels, seed=cfg.seed, cache_dir=cache_dir, desc="sample grid",
                      progress=progress)
    return (None if images is None else to_uint8(images)), labels


def real_data(w: Workload, cfg: Config, forget_class: int, progress: bool = True):
    """(forget images, labels, retain images, labels) of the base model's data, in its input space."""
    with processes().main_process_first():  # the main process encodes and caches; the others read
        return w.real_data(forget_class, cfg, progress and processes().is_main_process)


def method_data(method, w: Workload, cfg: Config, forget_class: int, progress: bool = True,
                cache_dir: Path | None = None, real=None):
    """(forget images, forget labels, retain images, retain labels) as the method is fed (see `Method`)."""
    xf, yf, xr, yr, _ = real if real is not None else real_data(w, cfg, forget_class, progress)
    if method.forget_data == "surrogate":  # SA: uniform-noise images in [-1, 1] (VAE-encoded for a latent model)
        gen = torch.Generator().manual_seed(cfg.seed + 5)
        if w.vae is None:
            xf = torch.rand(xf.shape, generator=gen) * 2 - 1
        else:
            size = w.pretrained.image_size
            noise = torch.rand((len(xf) // 2, 3, size, size), generator=gen) * 2 - 1
            xf = encode(noise, w.vae, seed=cfg.seed + 5, progress=False)
    if method.retain_data == "replay":  # SA: what the original model generates for the other classes
        yr = class_labels(w.num_classes, cfg.method.replay_per_class, exclude=forget_class)
        xr = generate(w.model, w, cfg, yr, seed=cfg.seed + 6, cache_dir=cache_dir, desc="replay", progress=progress,
                      decode=False, everywhere=True)  # every process trains on the replay
    return xf, yf, xr, yr


def erase(w: Workload, cfg: Config, forget_class: int, output: Path, *, resume: str | None = None,
          progress: bool = True, real=None):
    """The method's preparation (mask, Fisher, replay) then Algorithm 1 on a copy of the base model.

    Writes output/prepared.safetensors (mask and method state, reused on resume), output/log.jsonl and
    checkpoint-<step> folders every `erase.checkpoint_every` outer steps. `resume` is "latest" or a checkpoint folder;
    `real` the real data when already loaded (`real_data`).
    Every process runs this; only the main one writes. Returns (model, log, timings, kept)."""
    state = processes()
    main = state.is_main_process
    e = cfg.erase
    check_processes(cfg)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(w.model)
    if cfg.compute.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    method = make_method(cfg.method, DiTLoss(make_scheduler()), forget_class=forget_class, num_classes=w.num_classes)
    t0 = time.perf_counter()
    real = real if real is not None else real_data(w, cfg, forget_class, progress)
    xf, yf, xr, yr = method_data(method, w, cfg, forget_class, progress, cache_dir=output / "replay", real=real)
    prepared = output / "prepared.safetensors"
    # The method's preparation depends on the model, class, data, method config and seed only: it is cached (Fisher
    # diagonals and mask, safetensors) and linked into every run that needs the same, e.g. both optimizer modes.
    key = fingerprint({"model": w.model_id, "data": real.key, "class": forget_class, "seed": cfg.seed,
                       "precision": cfg.compute.mixed_precision, "settings": describe_model(w.model),
                       **{k: dataclasses.asdict(getattr(cfg, k)) for k in ("method", "sample")}})
    shared = cache_root() / "prepared" / f"{key}.safetensors"
    if main and not prepared.exists() and shared.exists():
        link(shared, prepared)
    state.wait_for_everyone()
    if prepared.exists():
        tensors = load_file(str(prepared))
        mask = {k[5:]: v for k, v in tensors.items() if k.startswith("mask.")} or None
        method.load_state({k[6:]: v.to(state.device) for k, v in tensors.items() if k.startswith("state.")}, w.model)
    else:
        partial = PartialSums(output / "prepare-partial", state.process_index, state.num_processes)
        with autocast(cfg):
            mask = method.prepare(model, lambda size: batches(xf, yf, size, cfg.seed + 1),
                                  lambda size: batches(xr, yr, size, cfg.seed + 2), progress and main, partial=partial)
        if main:
            tensors = {f"mask.{k}": v.to(torch.uint8).cpu() for k, v in (mask or {}).items()}
            tensors.update({f"state.{k}": v.contiguous().cpu() for k, v in method.state().items()})
            with atomic_path(shared) as tmp:
                save_file(tensors, str(tmp))
            link(shared, prepared)
        state.wait_for_everyone()
        shutil.rmtree(partial.folder, ignore_errors=True)
    if mask is not None:
        mask = {k: v.bool() for k, v in mask.items()}
    t1 = time.perf_counter()
    optimizers = make_optimizers([p for p in model.parameters() if p.requires_grad], e)
    start = 0
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(output) if resume == "latest" else Path(resume)
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizers)
    else:
        torch.manual_seed(cfg.seed + 7)
    log_path = output / "log.jsonl"
    if main:
        done = log_path.read_text().splitlines()[:start] if start and log_path.exists() else []
        atomic_write_text(log_path, "".join(line + "\n" for line in done))
    per_f, per_r = batches_per_step(method, e)
    rank, world = state.process_index, state.num_processes
    forget_data = shard(batches(xf, yf, e.batch_size, cfg.seed + 3, e.forget_label_dropout, w.num_classes,
                                start=start * per_f), rank, world)
    retain_data = shard(batches(xr, yr, e.batch_size, cfg.seed + 4, e.retain_label_dropout, w.num_classes,
                                start=start * per_r), rank, world)
    with open(log_path, "a") if main else contextlib.nullcontext() as log_file, autocast(cfg):
        def on_step(record):
            if not main:
                return
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            finished = record["step"] + 1
            if e.checkpoint_every and finished % e.checkpoint_every == 0 and finished < e.outer_steps:
                save_checkpoint(output, finished, model, optimizers)

        unlearn(model, method, forget_data, retain_data, e, mask=mask, optimizers=optimizers, on_step=on_step,
                start_step=start, progress=progress and main)
    t2 = time.perf_counter()
    state.wait_for_everyone()
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    steps = e.outer_steps - start
    timings = {"prepare_method_s": t1 - t0, "erase_s": t2 - t1, "erase_steps_per_s": steps / max(t2 - t1, 1e-9),
               "processes": world}
    return model.eval(), log, timings, None if mask is None else mask_fraction(mask)


def link(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (no second copy on disk), or a copy across file systems."""
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def save_model(model, w: Workload, folder: Path) -> None:
    """A latent model: a complete DiTPipeline folder with class names. Otherwise the transformer's save_pretrained.
    Tied embedders are written as equal copies (diffusers' layout); `dualerase.json` records the settings. Both are
    written into a temporary folder, then swapped in: never a half-written model folder."""
    if w.vae is not None:
        save_pipeline(folder, model, w.vae, w.pretrained.scheduler_config, dict(enumerate(w.classes.names)))
        return
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with separate_copies(model):
        model.save_pretrained(tmp)
    write_record(tmp, model)
    replace_folder(tmp, folder)


def check_processes(cfg: Config) -> None:
    """Data parallelism splits every erasure batch evenly over the processes."""
    n = processes().num_processes
    if cfg.erase.batch_size % n:
        raise UsageError(f"erase.batch_size {cfg.erase.batch_size} does not split over {n} processes: set it to a "
                         f"multiple of {n}")


def check_pseudo_class(cfg: Config, forget_class: int, num_classes: int) -> None:
    pseudo = cfg.method.pseudo_class
    if pseudo is not None and not (0 <= pseudo < num_classes and pseudo != forget_class):
        raise UsageError(f"method.pseudo_class {pseudo} must be a class other than {forget_class} in "
                         f"0..{num_classes - 1}")


def check_output(output: Path, cfg: Config, overwrite: bool, resume: str | None) -> bool:
    """Decide what to do with an existing output folder; returns True when a finished run is there to report."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file: give a folder")
    if not output.exists() or not any(output.iterdir()):
        return False
    if not (output / "config.yaml").exists():
        raise UsageError(f"{output} is not empty and holds no run: choose an empty or new --output folder")
    if overwrite:
        return False
    saved = output / "config.yaml"
    if resume:
        if saved.exists() and yaml.safe_load(saved.read_text()) != to_dict(cfg):
            raise UsageError(f"{output} holds a run with another config: resume with the same options, or pass "
                             "--overwrite to start over")
        if resume != "latest" and not (Path(resume) / "done").exists():
            raise UsageError(f"--resume {resume} is not a finished checkpoint folder: pass --resume latest")
        return (output / "metrics.json").exists()
    if (output / "metrics.json").exists():
        raise UsageError(f"{output} already holds a finished run: pass --overwrite to replace it, or choose another "
                         "--output")
    raise UsageError(f"{output} holds an unfinished run: pass --resume latest to continue it, or --overwrite to start "
                     "over")


def run(cfg: Config, class_arg: str, output: Path, *, overwrite: bool = False, resume: str | None = None,
        progress: bool = True) -> dict:
    """The whole job: prepare, measure the base model, erase, measure again, write the outputs.

    Killed at any point, the same call with `resume` continues: the prepared mask, the latest erasure checkpoint and
    every finished batch of samples are reused. A diverged erasure writes no "after" metrics. Under a multi-process
    launch every process runs this; work is shared and only the main process writes."""
    state = processes()
    main = state.is_main_process
    progress = progress and main
    classes = classes_of(cfg)
    forget_class = resolve_class(class_arg, classes)
    check_pseudo_class(cfg, forget_class, len(classes))
    check_processes(cfg)
    if check_output(output, cfg, overwrite, resume):
        return json.loads((output / "metrics.json").read_text())
    check_writable(output, "--output")  # now, not after hours of evaluation
    t_start = time.perf_counter()
    w = prepare(cfg, progress)
    real = real_data(w, cfg, forget_class, progress)  # bad data fails here, before any output is touched
    t_prepared = time.perf_counter()
    before = evaluate_base(w, cfg, forget_class, progress, job=output)
    t_before = time.perf_counter()
    state.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    if main:
        if overwrite and output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    state.wait_for_everyone()
    if resume and (output / "erase.json").exists():  # erasure had finished before the kill
        model = load_model(output / "model", **model_settings(cfg)).to(state.device)
        log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
        kept = json.loads((output / "erase.json").read_text())["mask_kept_fraction"]
        erase_timings = json.loads((output / "erase.json").read_text())["timings"]
    else:
        try:
            model, log, erase_timings, kept = erase(w, cfg, forget_class, output, resume=resume, progress=progress,
                                                    real=real)
        except DivergenceError as err:
            last = latest_checkpoint(output)
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was reached"
            side = "forget" if str(err).startswith(("forget", "joint")) else "retain"
            raise DivergenceError(f"erasure diverged at the {err}; {keep}; lower erase.{side}_lr (or erase.shared_lr)"
                                  f" or clip harder with a smaller erase.{side}_clip, then run again") from None
        if main:
            save_model(model, w, output / "model")
            atomic_write_json(output / "erase.json", {"timings": erase_timings, "mask_kept_fraction": kept})
        state.wait_for_everyone()
    t_erased = time.perf_counter()
    after = evaluate(model, w, cfg, forget_class, progress, desc="after", cache_dir=output / "samples-after",
                     save_to=output / "samples" if cfg.eval.save_samples else None)
    t_after = time.perf_counter()
    shown = grid_classes(w, cfg, forget_class)
    before_grid, grid_labels = grid_images(w.model, w, cfg, shown, progress, output / "samples-grid-before")
    after_grid, _ = grid_images(model, w, cfg, shown, progress, output / "samples-grid-after")
    metrics = {
        "forget_class": forget_class,
        "class_name": w.classes.short(forget_class),
        "method": cfg.method.name,
        "optimizer": cfg.erase.optimizer,
        "seed": cfg.seed,
        "outer_steps": cfg.erase.outer_steps,
        "model": w.model_id,
        "before": before,
        "after": after,
        "protocol": protocol(cfg, w, forget_class),
        "timings": {"prepare_s": t_prepared - t_start, "before_eval_s": t_before - t_prepared, **erase_timings,
                    "after_eval_s": t_after - t_erased, "total_s": time.perf_counter() - t_start},
        "mask_kept_fraction": kept,
        "loss_reductions": {side: getattr(cfg.method, f"{side}_reduction")  # over pixels: the published scale
                            or getattr(METHODS[cfg.method.name], f"{side}_reduction") for side in ("forget", "retain")},
        "final_log": log[-1] if log else None,
    }
    if main:
        save_image(sample_grid({"before": before_grid, "after": after_grid}, grid_labels, w.class_names,
                               marked=forget_class), output / "grid.png")
        for stale in output.glob("checkpoint-*"):  # the finished model supersedes them
            shutil.rmtree(stale, ignore_errors=True)
        atomic_write_json(output / "metrics.json", metrics)
    state.wait_for_everyone()
    return metrics if main else json.loads((output / "metrics.json").read_text())


SCORES = ("forget_accuracy", "forget_probability", "forget_entropy", "retain_accuracy", "fid")


def aggregate_trials(runs: list[dict]) -> dict:
    """One metrics record from several seeds: the single-run keys hold means, `std` the sample std, `trials` each run."""
    first = runs[0]
    metrics = {k: first[k] for k in ("forget_class", "class_name", "method", "optimizer", "seed", "outer_steps",
                                      "model")}
    metrics["seeds"] = [r["seed"] for r in runs]
    metrics["std"] = {}
    for side in ("before", "after"):
        metrics[side], metrics["std"][side] = {}, {}
        for key in SCORES:
            values = [r[side][key] for r in runs if r[side][key] is not None]  # a non-finite FID is null
            metrics[side][key] = statistics.fmean(values) if values else None
            metrics["std"][side][key] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
            if len(values) < len(runs):
                metrics[side][f"{key}_error"] = (f"not finite in {len(runs) - len(values)} of {len(runs)} trials "
                                                 "(see trials); the mean and std are over the others")
    metrics["protocol"] = {**first["protocol"], "seed": metrics["seeds"]}
    metrics["timings"] = {k: sum(r["timings"][k] for r in runs) for k in first["timings"]}
    metrics["timings"]["erase_steps_per_s"] = statistics.fmean(r["timings"]["erase_steps_per_s"] for r in runs)
    metrics["trials"] = runs
    return metrics


def run_trials(cfg: Config, class_arg: str, output: Path, trials: int = 1, *, overwrite: bool = False,
               resume: str | None = None, progress: bool = True) -> dict:
    """K runs with seeds seed, seed+1, ..., each in `output/trial-s<seed>`; `output/metrics.json` aggregates them."""
    if trials == 1:
        return run(cfg, class_arg, output, overwrite=overwrite, resume=resume, progress=progress)
    state = processes()
    resolve_class(class_arg, classes_of(cfg))
    check_processes(cfg)
    if check_output(output, cfg, overwrite, resume):
        return json.loads((output / "metrics.json").read_text())
    check_writable(output, "--output")
    state.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    if state.is_main_process:
        if overwrite and output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    state.wait_for_everyone()
    runs = [run(dataclasses.replace(cfg, seed=seed), class_arg, output / f"trial-s{seed}", resume="latest",
                progress=progress) for seed in range(cfg.seed, cfg.seed + trials)]
    metrics = aggregate_trials(runs)
    if state.is_main_process:
        atomic_write_json(output / "metrics.json", metrics)
    state.wait_for_everyone()
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="erase-class",
        description="Erase one class from a class-conditional diffusion transformer (DualOptim), and measure it.",
        epilog=(f"presets: {', '.join(preset_names())}.  Main keys for --set: erase.outer_steps, erase.forget_lr, "
                "erase.retain_lr, erase.shared_lr, erase.alpha, erase.alpha_schedule, erase.batch_size, "
                "erase.forget_clip, method.gamma, method.grad_samples, sample.steps, sample.guidance, "
                "eval.forget_samples, eval.retain_samples_per_class.  See README.md for every key."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("forget_class", help="the class to erase: an index (207), an ImageNet synset (n02099601) or a "
                        "name ('golden retriever'); for the digits default 0..9")
    parser.add_argument("--config", help="a preset name or a YAML path (default: digits; imagenet with --model)")
    parser.add_argument("--model", help="a DiT in diffusers layout: hub id (facebook/DiT-XL-2-256) or local folder "
                        "(config model.path; sets model.source=diffusers)")
    parser.add_argument("--data", help="ImageNet-style train folder of the model's classes (config data.path)")
    parser.add_argument("--method", choices=sorted(METHODS), help="base method (config method.name)")
    parser.add_argument("--optimizer", choices=("dual", "shared"), help="dual or shared optimizers (erase.optimizer)")
    parser.add_argument("--seed", type=int, help="seed of erasure and evaluation (config seed)")
    parser.add_argument("--trials", type=int, default=1, help="run K seeds from --seed on; report mean and std")
    parser.add_argument("--output", type=Path, help="output folder (default: runs/<class>-<method>-<optimizer>-s<seed>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set erase.outer_steps=200 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace whatever run is in --output")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="latest|CHECKPOINT",
                        help="continue the unfinished run in --output from its latest (or the given) checkpoint-<step> "
                             "and the samples on disk")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        overrides = []
        if args.model:
            overrides += ["model.source=diffusers", f"model.path={args.model}"]
        if args.data:
            overrides.append(f"data.path={args.data}")
        overrides += args.overrides
        if args.method:
            overrides.append(f"method.name={args.method}")
        if args.optimizer:
            overrides.append(f"erase.optimizer={args.optimizer}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = load_config(args.config or ("imagenet" if args.model or args.data else "digits"), overrides)
        output = args.output or Path("runs") / (
            f"{args.forget_class.replace(' ', '_')}-{cfg.method.name}-{cfg.erase.optimizer}-s{cfg.seed}")
        if args.trials < 1:
            raise UsageError(f"--trials must be >= 1, got {args.trials}")
        if args.overwrite and args.resume:
            raise UsageError("--overwrite and --resume contradict each other: pass one")
        metrics = run_trials(cfg, args.forget_class, output, args.trials, overwrite=args.overwrite,
                             resume=args.resume, progress=not args.quiet)
    except (ConfigError, UsageError, EvalError) as e:
        if is_main_process():  # under a launcher every process fails alike: one line, not one per process
            print(f"erase-class: error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        if is_main_process():
            print(f"erase-class: error: {e}", file=sys.stderr)
        return 1
    if processes().is_main_process:
        print(summary(metrics))
        where = "trial-s*/: " if args.trials > 1 else ""
        print(f"wrote {output}/: metrics.json, {where}model/, grid.png, config.yaml, log.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
