"""Erasure: the method's preparation (mask, Fisher, replay; cached and shared across runs), then
Algorithm 1 on a copy of the base model, checkpointed; and the erased model's folder."""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dualerase.config import Config
from dualerase.data.streams import batches, shard, stream_seed
from dualerase.errors import UsageError
from dualerase.launch import main_decides, processes
from dualerase.models.dit import make_scheduler, separate_copies
from dualerase.models.loss import DiTLoss
from dualerase.models.pretrained import save_pipeline, write_record
from dualerase.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dualerase.runs.probe import ForgetProbe
from dualerase.runs.sources import Prepared, prepare_method
from dualerase.runs.workload import Job, RealData, Workload
from dualerase.sampling import autocast
from dualerase.storage import atomic_write_text, replace_folder
from dualerase.unlearn import DivergenceError, EraseConfig, make_optimizers, unlearn
from dualerase.unlearn.dualoptim import batches_per_step
from dualerase.unlearn.methods import make_method
from dualerase.unlearn.saliency import mask_fraction


@dataclass
class Erased:
    """What an erasure gives: the erased model, its per-step log, timings, and the mask's share.

    `mask_kept_fraction` is the share of weights the mask keeps (None without a mask)."""

    model: torch.nn.Module
    log: list[dict]
    timings: dict
    mask_kept_fraction: float | None


def erase(w: Workload, cfg: Config, forget_class: int, real: RealData, output: Path, *,
          resume: str | None = None, progress: bool = True, trackers=None) -> Erased:
    """The method's preparation (mask, Fisher, replay), then Algorithm 1 on a copy of the model.

    Writes output/prepared.safetensors, output/log.jsonl and a checkpoint-<step> folder every
    `erase.checkpoint_every` outer steps; `resume` ("latest" or a checkpoint folder) continues
    from one. `real` is the base model's real data (`sources.real_data`); `trackers`
    (tracking.Trackers) get every step's record. With erase.stop_at_forget_accuracy the probe may
    end erasure early (`probe.py`). Every process runs this; only the main one writes.

    Raises:
        DivergenceError: erasure diverged; its message is the advice of `diverged`."""
    job = Job(w, cfg, forget_class, progress)
    check_processes(cfg)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(w.model)
    if cfg.compute.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    loss = DiTLoss(make_scheduler(), antithetic=cfg.method.antithetic_timesteps)
    method = make_method(cfg.method, loss, forget_class=forget_class, num_classes=w.num_classes)
    started = time.perf_counter()
    prepared = prepare_method(job, method, model, real, output)
    prepared_at = time.perf_counter()
    training = Training.of(model, cfg.erase)
    start, history = restore(output, resume, training, cfg.seed)
    forget_data, retain_data = streams(job, method, prepared, start)
    hook = StepHook(job, training, ForgetProbe(w, cfg, forget_class, history), output, trackers)
    with hook, autocast(cfg.compute.mixed_precision):
        try:
            unlearn(model, method, forget_data, retain_data, cfg.erase, mask=prepared.mask,
                    optimizers=training.optimizers, on_step=hook, start_step=start,
                    progress=progress and processes().is_main_process)
        except DivergenceError as err:
            raise diverged(err, output, cfg.erase) from None
    return finish(training, output, start, prepared.mask, (started, prepared_at))


@dataclass
class Training:
    """The copy of the base model that erasure trains, with its parameters, optimizers and EMA."""

    model: torch.nn.Module
    params: list[tuple[str, torch.nn.Parameter]]
    optimizers: tuple  # (Optim_f, Optim_r): the same object twice in shared mode
    ema: dict[str, torch.Tensor] | None  # SA's moving average of the weights (erase.ema_decay)

    @classmethod
    def of(cls, model: torch.nn.Module, erase_cfg: EraseConfig) -> Training:
        """Fresh optimizers of `model`'s trained parameters and, with erase.ema_decay, an EMA."""
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizers = make_optimizers([p for _, p in params], erase_cfg)
        ema = {n: p.detach().clone() for n, p in params} if erase_cfg.ema_decay else None
        return cls(model, params, optimizers, ema)


def restore(output: Path, resume: str | None, training: Training,
            seed: int) -> tuple[int, list[dict]]:
    """The outer steps already done and their log records: restored from a checkpoint, or none.

    A resumed run loads `resume` ("latest" or a checkpoint folder) into `training`, RNG included;
    a fresh one seeds the erasure's stream. The main process cuts output/log.jsonl back to the
    steps done."""
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(output) if resume == "latest" else Path(resume)
    start = 0
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, training.model, training.optimizers, training.ema)
    else:
        torch.manual_seed(stream_seed(seed, "erasure"))
    log_path = output / "log.jsonl"
    done = log_path.read_text().splitlines()[:start] if start and log_path.exists() else []
    if processes().is_main_process:
        atomic_write_text(log_path, "".join(line + "\n" for line in done))
    return start, [json.loads(line) for line in done]


def streams(job: Job, method, prepared: Prepared, start: int) -> tuple:
    """This process's share of the endless forget and retain batches, from outer step `start` on."""
    erase_cfg, seed, state = job.cfg.erase, job.cfg.seed, processes()
    per_f, per_r = batches_per_step(method, erase_cfg)
    forget = batches(prepared.forget_x, prepared.forget_y, erase_cfg.batch_size,
                     stream_seed(seed, "forget_batches"), erase_cfg.forget_label_dropout,
                     job.w.num_classes, start=start * per_f)
    retain = batches(prepared.retain_x, prepared.retain_y, erase_cfg.batch_size,
                     stream_seed(seed, "retain_batches"), erase_cfg.retain_label_dropout,
                     job.w.num_classes, start=start * per_r)
    rank, world = state.process_index, state.num_processes
    return shard(forget, rank, world), shard(retain, rank, world)


class StepHook:
    """`unlearn`'s on_step: after every outer step the EMA, probe, log line, trackers, checkpoint.

    Used as a context manager, which holds output/log.jsonl open on the main process."""

    def __init__(self, job: Job, training: Training, probe: ForgetProbe, output: Path,
                 trackers=None):
        """The hook of a run's erasure; `trackers` (tracking.Trackers) get every step's record."""
        self.job, self.training, self.probe = job, training, probe
        self.output, self.trackers = output, trackers
        self.main = processes().is_main_process
        self.log_file = None

    def __enter__(self) -> StepHook:
        """Open the log for appending (on the main process)."""
        if self.main:
            self.log_file = open(self.output / "log.jsonl", "a")
        return self

    def __exit__(self, *exc) -> None:
        """Close the log."""
        if self.log_file is not None:
            self.log_file.close()

    def __call__(self, record: dict) -> bool:
        """A finished step's duties, in order; returns True to end erasure there (an early stop)."""
        finished = record["step"] + 1
        self.update_ema()
        stop = self.probe_due(record, finished)
        if self.main:
            self.write(record)
            self.track(record, finished)
            if self.checkpoint_due(finished, stop):
                self.checkpoint(finished)
        return stop

    def update_ema(self) -> None:
        """Move the EMA towards the weights by 1 - erase.ema_decay (nothing without an EMA)."""
        if self.training.ema is None:
            return
        for n, p in self.training.params:
            self.training.ema[n].lerp_(p.detach(), 1 - self.job.cfg.erase.ema_decay)

    def probe_due(self, record: dict, finished: int) -> bool:
        """Probe when due (the main process, into `record`); whether every process stops here."""
        if not self.probe.due(finished):
            return False
        if self.main:
            record["probe_forget_accuracy"] = self.probe(self.training.model)
        return main_decides(self.main and self.probe.stop(record["probe_forget_accuracy"]))

    def write(self, record: dict) -> None:
        """Append the step's record to output/log.jsonl, flushed: a killed run keeps it."""
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def track(self, record: dict, finished: int) -> None:
        """Send the step's record to the trackers, if any."""
        if self.trackers is not None:
            self.trackers.log({k: v for k, v in record.items() if k != "step"}, step=finished)

    def checkpoint_due(self, finished: int, stop: bool) -> bool:
        """Every erase.checkpoint_every steps, but not after the last step nor at an early stop."""
        erase_cfg = self.job.cfg.erase
        return bool(erase_cfg.checkpoint_every and finished % erase_cfg.checkpoint_every == 0
                    and finished < erase_cfg.outer_steps and not stop)

    def checkpoint(self, finished: int) -> None:
        """Write checkpoint-<finished> with the base model's id and the EMA."""
        save_checkpoint(self.output, finished, self.training.model, self.training.optimizers,
                        self.job.w.model_id, ema=self.training.ema)


def finish(training: Training, output: Path, start: int, mask: dict | None,
           times: tuple[float, float]) -> Erased:
    """The erased model (the EMA, if kept), its whole log and timings, once every process is done.

    `times` are the perf_counter readings when the preparation started and ended."""
    if training.ema is not None:  # the erased model is the average
        with torch.no_grad():
            for n, p in training.params:
                p.copy_(training.ema[n])
    (started, prepared_at), erased_at = times, time.perf_counter()
    processes().wait_for_everyone()
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    steps, erase_s = len(log) - start, erased_at - prepared_at
    timings = {"prepare_method_s": prepared_at - started, "erase_s": erase_s,
               "erase_steps_per_s": steps / max(erase_s, 1e-9),
               "processes": processes().num_processes}
    return Erased(training.model.eval(), log, timings,
                  None if mask is None else mask_fraction(mask))


def diverged(err: DivergenceError, output: Path, erase_cfg: EraseConfig) -> DivergenceError:
    """The divergence with what to do: the last good checkpoint, which rate or clip to lower (the
    side's own in dual mode; a joint step is clipped as a forget step)."""
    last = latest_checkpoint(output)
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint was reached"
    side = "retain" if err.side == "retain" else "forget"
    rate = "erase.shared_lr" if erase_cfg.optimizer == "shared" else f"erase.{side}_lr"
    advice = f"lower {rate} or clip harder with a smaller erase.{side}_clip, then run again"
    return DivergenceError(err.side, err.step, err.reason,
                           f"erasure diverged at the {err}; {keep}; {advice}")


def save_model(model, w: Workload, folder: Path) -> None:
    """Write the erased model's folder, swapped in whole: never a half-written model folder.

    A latent model: a complete DiTPipeline folder with class names. Otherwise the transformer's
    save_pretrained. Tied embedders are written as equal copies (diffusers' layout);
    `dualerase.json` records the settings. Both are written into a temporary folder first."""
    from dualerase.storage import writing

    tmp = folder.with_name(f".{folder.name}.tmp")  # save_pipeline's too
    with writing(folder, tmp):  # a failed write removes it
        if w.vae is not None:
            save_pipeline(folder, model, w.vae, w.pretrained.scheduler_config,
                          dict(enumerate(w.classes.names)))
            return
        shutil.rmtree(tmp, ignore_errors=True)
        with separate_copies(model):
            model.save_pretrained(tmp)
        write_record(tmp, model)
        replace_folder(tmp, folder)


def check_processes(cfg: Config) -> None:
    """Refuse a launch that disagrees with the config.

    Data parallelism must split every erasure batch evenly over the processes, and a mixed
    precision chosen by `accelerate launch` (its flag or `accelerate config`) must be the config's.

    Raises:
        UsageError: either does not hold."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched is not None and launched != cfg.compute.mixed_precision:
        if launched in ("no", "bf16"):
            fix = f"--set compute.mixed_precision={launched}"
        else:
            fix = ("--set compute.mixed_precision=bf16 (fp16 is not supported: its loss scaling is "
                   "not implemented)")
        raise UsageError(f"accelerate launch asks for mixed precision {launched} but "
                         f"compute.mixed_precision is {cfg.compute.mixed_precision}: make them "
                         f"agree, with {fix} or accelerate launch --mixed_precision "
                         f"{cfg.compute.mixed_precision}")
    n = processes().num_processes
    if cfg.erase.batch_size % n:
        raise UsageError(f"erase.batch_size {cfg.erase.batch_size} does not split over {n} "
                         f"processes: set it to a multiple of {n}")


def check_pseudo_class(cfg: Config, forget_class: int, num_classes: int) -> None:
    """Refuse a method.pseudo_class that is the forget class or no class of the model.

    Raises:
        UsageError: it is."""
    pseudo = cfg.method.pseudo_class
    if pseudo is not None and not (0 <= pseudo < num_classes and pseudo != forget_class):
        raise UsageError(f"method.pseudo_class {pseudo} must be a class other than {forget_class} "
                         f"in 0..{num_classes - 1}")
