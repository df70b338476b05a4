"""Class-conditional sampling with classifier-free guidance, for any scheduler, classes, space."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dualerase.data.streams import seeded_generator
from dualerase.launch import processes
from dualerase.models.dit import fixed_variance, learns_sigma, num_classes, sampler_scheduler
from dualerase.storage import atomic_path


def class_labels(num_classes: int, per_class: int, *, only: int | None = None,
                 exclude: int | None = None):
    """Balanced labels: `per_class` of each class, of class `only`, or of every class but `exclude`.

    Giving both `only` and `exclude` raises ValueError."""
    if only is not None and exclude is not None:
        raise ValueError("give `only` or `exclude`, not both")
    classes = [only] if only is not None else [c for c in range(num_classes) if c != exclude]
    return torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)


@torch.no_grad()
def sample(model, scheduler, labels: torch.Tensor, *, num_steps: int, guidance: float, seed: int,
           batch_size: int = 500, vae=None, progress: bool = True, desc: str = "sample",
           cache_dir: Path | None = None, shard: tuple[int, int] = (0, 1), quantize: bool = True,
           guidance_channels: int | None = None) -> torch.Tensor:
    """Sample one image per label, in [-1, 1] (decoded through `vae` for latent models).

    A learned variance is taken from the conditional half and passed to schedulers that use it
    (variance_type "learned"/"learned_range"); a model without one (out channels = in channels)
    samples with the fixed posterior variance instead. The initial noise, then each step's noise,
    are drawn from one CPU generator per batch, seeded by (`seed`, the batch's first index).

    Args:
        model: the DiT.
        scheduler: a diffusers scheduler; `num_steps` of its timesteps are run.
        labels: one class label per image.
        num_steps: sampling steps.
        guidance: the guidance scale (1: no guidance, no null-class pass).
        seed: the sampling seed.
        batch_size: images per batch (part of the sampling protocol: it keys the noise).
        vae: decodes latents; None: the samples are what the model makes.
        progress: show a progress bar (on rank 0); `desc` names it.
        cache_dir: every finished batch is stored there (as 8-bit images, the precision every
            evaluation reads; as floats with `quantize=False`, e.g. for latents) and a later call
            with the same arguments reuses it: a killed sampling run resumes where it stopped.
        shard: (rank, world): this process draws only batches rank, rank + world, ... (each
            batch's noise depends on its position alone, so the shards together are exactly the
            unsharded samples) and returns only those.
        quantize: store 8-bit images in `cache_dir`, and return what a cache read gives back.
        guidance_channels: guide only the first this many epsilon channels (DiT's
            `forward_with_cfg` guides 3 of 4 latent channels "for exact reproducibility"; the
            others come from the conditional half); None: all of them.
    """
    was_training = model.training
    model.eval()
    null = num_classes(model)
    channels, size = model.config.in_channels, model.config.sample_size
    # read once: diffusers finds each by walking every module
    device, dtype = model.device, model.dtype
    guided = channels if guidance_channels is None else guidance_channels
    learned = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
    if learned and not learns_sigma(model):  # nothing to read a learned variance from
        scheduler, learned = fixed_variance(scheduler), False
    scheduler.set_timesteps(num_steps)
    images = []
    rank, world = shard
    starts = list(range(0, len(labels), batch_size))[rank::world]
    bar = tqdm(total=sum(len(labels[s:s + batch_size]) for s in starts) * num_steps, desc=desc,
               unit="step", disable=not progress or rank != 0)
    for start in starts:
        y = labels[start:start + batch_size].to(device)
        stored = cache_dir / f"batch-{start:08d}-{len(y)}.pt" if cache_dir is not None else None
        if stored is not None and stored.exists():
            x = torch.load(stored)
            images.append(from_uint8(x) if x.dtype == torch.uint8 else x)
            bar.update(len(y) * num_steps)
            continue
        gen = seeded_generator(seed, start)
        x = torch.randn((len(y), channels, size, size), generator=gen).to(device, dtype)
        x = x * scheduler.init_noise_sigma
        if guidance != 1.0:
            y = torch.cat([y, torch.full_like(y, null)])
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            if guidance != 1.0:
                inp = torch.cat([inp, inp])
            out = model(inp, t.expand(len(inp)).to(device), class_labels=y).sample
            if guidance != 1.0:
                cond, uncond = out.chunk(2)
                eps = uncond[:, :guided] + guidance * (cond[:, :guided] - uncond[:, :guided])
                out = torch.cat([eps, cond[:, guided:]], dim=1)
            if not learned:
                out = out[:, :channels]
            x = scheduler.step(out, t, x, generator=gen).prev_sample
            bar.update(len(x))
        if vae is not None:
            x = vae.decode(x / vae.config.scaling_factor).sample
        x = x.float().cpu()
        if stored is not None:
            with atomic_path(stored) as tmp:
                torch.save(to_uint8(x) if quantize else x, tmp)
            if quantize:
                x = from_uint8(to_uint8(x))
        images.append(x)
    bar.close()
    model.train(was_training)
    return torch.cat(images) if images else torch.empty(0, 3, size, size)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 in [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] back to floats in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def autocast(precision: str):
    """bf16 autocast on the process's device for `precision` bf16 (compute.mixed_precision).

    Weights stay float32; `precision` "no" gives a context that does nothing."""
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(processes().device.type, dtype=torch.bfloat16)


def generate(model, vae, sampler, labels: torch.Tensor, *, precision: str, seed: int,
             cache_dir: Path | None, desc: str, progress: bool, decode: bool = True,
             everywhere: bool = False) -> torch.Tensor | None:
    """Samples for `labels`, sharded across processes by batch (`sample`).

    Each process draws its batches into `cache_dir`, then the main process (every process with
    `everywhere`) reads them all back; the others get None. One process needs no cache_dir. Without
    `decode`, a latent model's samples stay latents (kept as floats). `sampler` is the config's
    `sample` section; `precision` the config's `compute.mixed_precision`."""
    state = processes()
    kwargs = dict(num_steps=sampler.steps, guidance=sampler.guidance, seed=seed,
                  batch_size=sampler.batch_size, vae=vae if decode else None, desc=desc,
                  cache_dir=cache_dir, quantize=decode, guidance_channels=sampler.guidance_channels)
    scheduler = sampler_scheduler(sampler.scheduler, sampler.timestep_spacing)
    with autocast(precision):
        images = sample(model, scheduler, labels, progress=progress, shard=(state.process_index,
                        state.num_processes), **kwargs)
    if state.num_processes == 1:
        return images
    state.wait_for_everyone()
    if not (everywhere or state.is_main_process):
        return None
    # every batch is on disk: reads only
    return sample(model, scheduler, labels, progress=False, **kwargs)
