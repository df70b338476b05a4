"""Erasure: the method's preparation (mask, Fisher, replay; cached and shared across runs), then Algorithm 1 on a copy
of the base model, checkpointed; and the erased model's folder."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dualerase.config import Config
from dualerase.data.streams import batches, shard, stream_seed
from dualerase.errors import UsageError
from dualerase.launch import main_decides, processes
from dualerase.models.dit import describe_model, make_scheduler, separate_copies
from dualerase.models.loss import DiTLoss
from dualerase.models.pretrained import save_pipeline, write_record
from dualerase.runs.checkpoint import PartialSums, latest_checkpoint, load_checkpoint, save_checkpoint
from dualerase.runs.probe import ForgetProbe
from dualerase.runs.sources import Source
from dualerase.runs.workload import RealData, Workload
from dualerase.sampling import autocast
from dualerase.storage import atomic_path, atomic_write_text, cache_root, fingerprint, link, replace_folder
from dualerase.unlearn import DivergenceError, make_optimizers, unlearn
from dualerase.unlearn.dualoptim import batches_per_step
from dualerase.unlearn.methods import make_method
from dualerase.unlearn.saliency import mask_fraction


@dataclass
class Erased:
    """What an erasure gives: the erased model, its per-step log, timings, and the share of weights the mask keeps
    (None without a mask)."""

    model: torch.nn.Module
    log: list[dict]
    timings: dict
    mask_kept_fraction: float | None


def erase(w: Workload, cfg: Config, forget_class: int, real: RealData, output: Path, *, resume: str | None = None,
          progress: bool = True, trackers=None) -> Erased:
    """The method's preparation (mask, Fisher, replay) then Algorithm 1 on a copy of the base model.

    Writes output/prepared.safetensors (mask and method state, reused on resume), output/log.jsonl and
    checkpoint-<step> folders every `erase.checkpoint_every` outer steps. `real` is the base model's real data
    (`sources.real_data`); `resume` is "latest" or a checkpoint folder; `trackers` (tracking.Trackers) get every
    step's record. With erase.stop_at_forget_accuracy the forget-accuracy probe may end erasure early (`probe.py`).
    Every process runs this; only the main one writes. A divergence raises DivergenceError with the advice of
    `diverged`."""
    state = processes()
    main = state.is_main_process
    e = cfg.erase
    check_processes(cfg)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(w.model)
    if cfg.compute.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    method = make_method(cfg.method, DiTLoss(make_scheduler(), antithetic=cfg.method.antithetic_timesteps),
                         forget_class=forget_class, num_classes=w.num_classes)
    t0 = time.perf_counter()
    # SA's replay samples of the base model depend on the model, class, sampler and seed only: kept in the cache, so
    # that both optimizer modes (and a resumed run) read the samples the first run drew
    replay = fingerprint({"model": w.model_id, "class": forget_class, "seed": cfg.seed, "sample":
                          dataclasses.asdict(cfg.sample), "per_class": cfg.method.replay_per_class,
                          "precision": cfg.compute.mixed_precision})
    xf, yf, xr, yr = method.data(Source(w, cfg, real, progress, replay_dir=cache_root() / "replay" / replay))
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
        with autocast(cfg.compute.mixed_precision):
            mask = method.prepare(model, lambda size: batches(xf, yf, size, stream_seed(cfg.seed, "forget_samples")),
                                  lambda size: batches(xr, yr, size, stream_seed(cfg.seed, "retain_samples")),
                                  progress and main, partial=partial)
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
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizers = make_optimizers([p for _, p in trained], e)
    ema = {n: p.detach().clone() for n, p in trained} if e.ema_decay else None  # SA's EMA of the weights
    start = 0
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(output) if resume == "latest" else Path(resume)
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizers, ema)
    else:
        torch.manual_seed(stream_seed(cfg.seed, "erasure"))
    log_path = output / "log.jsonl"
    done = log_path.read_text().splitlines()[:start] if start and log_path.exists() else []
    if main:
        atomic_write_text(log_path, "".join(line + "\n" for line in done))
    probe = ForgetProbe(w, cfg, forget_class, [json.loads(line) for line in done])
    per_f, per_r = batches_per_step(method, e)
    rank, world = state.process_index, state.num_processes
    forget_data = shard(batches(xf, yf, e.batch_size, stream_seed(cfg.seed, "forget_batches"), e.forget_label_dropout,
                                w.num_classes, start=start * per_f), rank, world)
    retain_data = shard(batches(xr, yr, e.batch_size, stream_seed(cfg.seed, "retain_batches"), e.retain_label_dropout,
                                w.num_classes, start=start * per_r), rank, world)
    precision = cfg.compute.mixed_precision
    with (open(log_path, "a") if main else contextlib.nullcontext()) as log_file, autocast(precision):
        def on_step(record) -> bool:
            finished = record["step"] + 1
            if ema is not None:
                for n, p in trained:
                    ema[n].lerp_(p.detach(), 1 - e.ema_decay)
            stop = False
            if probe.due(finished):
                if main:
                    record["probe_forget_accuracy"] = probe(model)
                stop = main_decides(main and probe.stop(record["probe_forget_accuracy"]))
            if main:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                if trackers is not None:
                    trackers.log({k: v for k, v in record.items() if k != "step"}, step=finished)
                if e.checkpoint_every and finished % e.checkpoint_every == 0 and finished < e.outer_steps and not stop:
                    save_checkpoint(output, finished, model, optimizers, w.model_id, ema=ema)
            return stop

        try:
            unlearn(model, method, forget_data, retain_data, e, mask=mask, optimizers=optimizers, on_step=on_step,
                    start_step=start, progress=progress and main)
        except DivergenceError as err:
            raise diverged(err, output) from None
    if ema is not None:  # the erased model is the average
        with torch.no_grad():
            for n, p in trained:
                p.copy_(ema[n])
    t2 = time.perf_counter()
    state.wait_for_everyone()
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    steps = len(log) - start
    timings = {"prepare_method_s": t1 - t0, "erase_s": t2 - t1, "erase_steps_per_s": steps / max(t2 - t1, 1e-9),
               "processes": world}
    return Erased(model.eval(), log, timings, None if mask is None else mask_fraction(mask))


def diverged(err: DivergenceError, output: Path) -> DivergenceError:
    """The divergence with what to do about it: the last good checkpoint, and which learning rate or clip to lower."""
    last = latest_checkpoint(output)
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint was reached"
    side = "retain" if err.side == "retain" else "forget"  # a joint step is clipped and stepped as a forget step
    advice = (f"lower erase.{side}_lr (or erase.shared_lr) or clip harder with a smaller erase.{side}_clip, then "
              "run again")
    return DivergenceError(err.side, err.step, err.reason, f"erasure diverged at the {err}; {keep}; {advice}")


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
    """The launch agrees with the config: data parallelism splits every erasure batch evenly over the processes, and
    a mixed precision chosen by `accelerate launch` (its flag or `accelerate config`) is the config's."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched is not None and launched != cfg.compute.mixed_precision:
        fix = (f"--set compute.mixed_precision={launched}" if launched in ("no", "bf16")
               else "--set compute.mixed_precision=bf16 (fp16 is not supported: its loss scaling is not implemented)")
        raise UsageError(f"accelerate launch asks for mixed precision {launched} but compute.mixed_precision is "
                         f"{cfg.compute.mixed_precision}: make them agree, with {fix} or accelerate launch "
                         f"--mixed_precision {cfg.compute.mixed_precision}")
    n = processes().num_processes
    if cfg.erase.batch_size % n:
        raise UsageError(f"erase.batch_size {cfg.erase.batch_size} does not split over {n} processes: set it to a "
                         f"multiple of {n}")


def check_pseudo_class(cfg: Config, forget_class: int, num_classes: int) -> None:
    pseudo = cfg.method.pseudo_class
    if pseudo is not None and not (0 <= pseudo < num_classes and pseudo != forget_class):
        raise UsageError(f"method.pseudo_class {pseudo} must be a class other than {forget_class} in "
                         f"0..{num_classes - 1}")
