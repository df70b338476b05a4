"""What a method is fed: the base model's real forget and retain data, uniform-noise surrogates and
replay samples; and what it prepares from them (mask, Fisher, replay), cached and shared across
runs."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from dualerase.config import Config
from dualerase.data.folders import encode
from dualerase.data.streams import batches, stream_seed
from dualerase.launch import processes
from dualerase.models.dit import describe_model
from dualerase.runs.checkpoint import PartialSums
from dualerase.runs.workload import Job, RealData, Workload
from dualerase.sampling import autocast, generate
from dualerase.storage import atomic_path, cache_root, drop_damaged, fingerprint, link


def real_data(w: Workload, cfg: Config, forget_class: int, progress: bool = True) -> RealData:
    """The base model's real forget and retain data, in its input space (latents if latent)."""
    with processes().main_process_first():  # the main process encodes and caches; the others read
        return w.real_data(forget_class, cfg, progress and processes().is_main_process)


class Source:
    """What a method's data is built from (`Method.data`).

    The real images, uniform-noise surrogates in the model's input space, and replay samples of
    the original model."""

    def __init__(self, w: Workload, cfg: Config, real: RealData, progress: bool,
                 replay_dir: Path | None):
        """The sources of a run: replay samples are kept in `replay_dir` (None: not kept)."""
        self.w, self.cfg, self.real = w, cfg, real
        self.progress, self.replay_dir = progress, replay_dir

    def surrogate(self, like: torch.Tensor) -> torch.Tensor:
        """As many uniform-noise images in [-1, 1] as `like` holds.

        For a latent model: half as many, VAE-encoded with their flips."""
        gen = torch.Generator().manual_seed(stream_seed(self.cfg.seed, "surrogate"))
        if self.w.vae is None:
            return torch.rand(like.shape, generator=gen) * 2 - 1
        size = self.w.pretrained.image_size
        noise = torch.rand((len(like) // 2, 3, size, size), generator=gen) * 2 - 1
        return encode(noise, self.w.vae, seed=stream_seed(self.cfg.seed, "surrogate"),
                      progress=False)

    def replay(self, labels: torch.Tensor, stream: str = "replay") -> torch.Tensor:
        """Samples the original model generates for `labels`, from the named random stream.

        Drawn with the evaluation sampler, in the model's input space; every process gets all of
        them (every process trains on the replay)."""
        if stream == "replay" or self.replay_dir is None:
            cache = self.replay_dir
        else:
            cache = self.replay_dir / stream
        return generate(self.w.model, self.w.vae, self.cfg.sample, labels,
                        precision=self.cfg.compute.mixed_precision,
                        seed=stream_seed(self.cfg.seed, stream), cache_dir=cache,
                        desc=stream.replace("_", " "), progress=self.progress, decode=False,
                        everywhere=True)


class Prepared(NamedTuple):
    """What a method erases with: its forget and retain data, and its mask (None without one)."""

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    mask: dict[str, torch.Tensor] | None


def replay_key(job: Job) -> str:
    """The fingerprint of SA's replay samples of the base model: model, class, sampler, seed."""
    cfg = job.cfg
    return fingerprint({"model": job.w.model_id, "class": job.forget_class, "seed": cfg.seed,
                        "sample": dataclasses.asdict(cfg.sample),
                        "per_class": cfg.method.replay_per_class,
                        "precision": cfg.compute.mixed_precision})


def preparation_key(job: Job, real: RealData) -> str:
    """The fingerprint of the method's preparation: model, class, data, method config and seed."""
    cfg = job.cfg
    return fingerprint({"model": job.w.model_id, "data": real.key, "class": job.forget_class,
                        "seed": cfg.seed, "precision": cfg.compute.mixed_precision,
                        "settings": describe_model(job.w.model),
                        "method": dataclasses.asdict(cfg.method),
                        "sample": dataclasses.asdict(cfg.sample)})


def prepare_method(job: Job, method, model: torch.nn.Module, real: RealData,
                   output: Path) -> Prepared:
    """The method's data and preparation (mask, Fisher, replay): read, linked from cache, or made.

    SA's replay samples are kept in the cache (`replay_key`), so that both optimizer modes and a
    resumed run read the samples the first run drew. The preparation is cached too (Fisher
    diagonals and mask, safetensors, `preparation_key`) and linked into every run that needs the
    same, as output/prepared.safetensors.

    Args:
        job: the run.
        method: the unlearning method (`make_method`); its state is prepared or loaded in place.
        model: the copy of the base model that erasure trains.
        real: the base model's real data (`real_data`).
        output: the run folder.

    Returns:
        The method's forget and retain data and its mask (boolean; None without one)."""
    state = processes()
    replay_dir = cache_root() / "replay" / replay_key(job)
    prepared = output / "prepared.safetensors"
    shared = cache_root() / "prepared" / f"{preparation_key(job, real)}.safetensors"
    if state.is_main_process:  # a damaged preparation or replay sample batch is made again
        drop_damaged([prepared, shared, *replay_dir.rglob("batch-*.pt")])
    state.wait_for_everyone()
    xf, yf, xr, yr = method.data(Source(job.w, job.cfg, real, job.progress, replay_dir=replay_dir))
    if state.is_main_process and not prepared.exists() and shared.exists():
        link(shared, prepared)
    state.wait_for_everyone()
    if prepared.exists():
        mask = load_prepared(prepared, method, job.w.model)
    else:
        mask = make_prepared(job, method, model, (xf, yf, xr, yr), output, shared)
    if mask is not None:
        mask = {k: v.bool() for k, v in mask.items()}
    return Prepared(xf, yf, xr, yr, mask)


def load_prepared(path: Path, method, original: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The mask saved in `path` (None without one); the method's state is loaded from it too."""
    tensors = load_file(str(path))
    mask = {k[5:]: v for k, v in tensors.items() if k.startswith("mask.")} or None
    device = processes().device
    method.load_state({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("state.")},
                      original)
    return mask


def make_prepared(job: Job, method, model: torch.nn.Module, data: tuple, output: Path,
                  shared: Path) -> dict[str, torch.Tensor] | None:
    """The method's preparation computed on `model`, saved to `shared` and linked into `output`.

    Its per-sample loops keep running sums in output/prepare-partial (a killed preparation
    continues there), removed once the preparation is saved. Returns the mask (None without)."""
    state = processes()
    cfg, (xf, yf, xr, yr) = job.cfg, data
    partial = PartialSums(output / "prepare-partial", state.process_index, state.num_processes)
    with autocast(cfg.compute.mixed_precision):
        mask = method.prepare(
            model, lambda size: batches(xf, yf, size, stream_seed(cfg.seed, "forget_samples")),
            lambda size: batches(xr, yr, size, stream_seed(cfg.seed, "retain_samples")),
            job.progress and state.is_main_process, partial=partial)
    if state.is_main_process:
        tensors = {f"mask.{k}": v.to(torch.uint8).cpu() for k, v in (mask or {}).items()}
        tensors.update({f"state.{k}": v.contiguous().cpu() for k, v in method.state().items()})
        with atomic_path(shared) as tmp:
            save_file(tensors, str(tmp))
        link(shared, output / "prepared.safetensors")
    state.wait_for_everyone()
    shutil.rmtree(partial.folder, ignore_errors=True)
    return mask
