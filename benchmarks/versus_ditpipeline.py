"""Our sampler against diffusers' DiTPipeline on one 1000-class latent DiT, VAE, scheduler and
initial noise: images/s of each over interleaved repeats (median), their ratio, and the largest
difference between their images."""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
from diffusers import DiTPipeline
from diffusers.utils.torch_utils import randn_tensor

from dualerase.data.streams import seeded_generator
from dualerase.models.dit import fixed_variance, make_scheduler, num_classes, sampler_scheduler
from dualerase.sampling import sample

SCHEDULERS = {"ddim": "DDIM, eta 0 (deterministic given the initial noise)",
              "ddpm": "DDPM, fixed posterior variance (step noise: ours from the batch's "
                      "generator, DiTPipeline's from the global one, so the images differ)"}


def dit_scheduler(kind: str):
    """DiT's linear betas 1e-4..0.02 and linspace steps, with a variance DiTPipeline can step with:
    DDIM with eta 0 ("ddim") or DDPM with the fixed posterior variance ("ddpm")."""
    if kind == "ddim":
        return sampler_scheduler("ddim")
    if kind == "ddpm":
        return fixed_variance(make_scheduler())
    raise ValueError(f"scheduler {kind!r}: choose one of {sorted(SCHEDULERS)}")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds one call of `fn` takes, queued device work included, and what it returned."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def same_initial_noise(model, seed: int, batch: int) -> bool:
    """Whether DiTPipeline's `randn_tensor`, given `seeded_generator(seed, 0)`, draws our sampler's
    initial noise."""
    shape = (batch, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    ours = torch.randn(shape, generator=seeded_generator(seed, 0)).to(model.device, model.dtype)
    theirs = randn_tensor(shape, generator=seeded_generator(seed, 0), device=model.device,
                          dtype=model.dtype)
    return torch.equal(ours, theirs)


def compare(model, vae, scheduler, *, batch: int, steps: int, guidance: float, repeats: int,
            seed: int = 0, precision=contextlib.nullcontext) -> dict:
    """Time our `sample` and DiTPipeline on one batch of `batch` labels, alternating which goes
    first, after one untimed run of each; both decode through `vae` and hand back float images on
    the host, in [0, 1].

    `precision` makes the context each run goes in (e.g. bf16 autocast). Guidance is on every latent
    channel, as DiTPipeline guides; it must be >= 1 (DiTPipeline runs unguided at or below 1, ours
    guides at any scale but 1)."""
    if num_classes(model) != 1000:
        raise ValueError("DiTPipeline hard-codes the null class 1000; the model has "
                         f"{num_classes(model)} classes")
    if guidance < 1:
        raise ValueError(f"guidance {guidance} < 1: DiTPipeline would not guide, ours would")
    model.eval()
    vae.eval()
    device = model.device
    labels = torch.arange(batch) * 997 % 1000  # distinct classes across the range
    ours_scheduler = type(scheduler).from_config(scheduler.config)
    pipe = DiTPipeline(transformer=model, vae=vae,
                       scheduler=type(scheduler).from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)

    def ours() -> torch.Tensor:
        with precision():
            images = sample(model, ours_scheduler, labels, num_steps=steps, guidance=guidance,
                            seed=seed, batch_size=batch, vae=vae, progress=False)
        return (images / 2 + 0.5).clamp(0, 1)  # DiTPipeline's range

    def theirs() -> torch.Tensor:
        with precision():
            images = pipe(labels.tolist(), guidance_scale=guidance,
                          generator=seeded_generator(seed, 0), num_inference_steps=steps,
                          output_type="pt").images
        return images.float().cpu()

    times = {"ours": [], "theirs": []}
    # warm-up, untimed
    first = {name: timed(fn, device)[1] for name, fn in (("ours", ours), ("theirs", theirs))}
    for r in range(repeats):
        order = ((("ours", ours), ("theirs", theirs)) if r % 2 == 0
                 else (("theirs", theirs), ("ours", ours)))
        for name, fn in order:
            times[name].append(timed(fn, device)[0])
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"batch": batch, "steps": steps, "guidance": guidance, "repeats": repeats,
            "seconds": times, "ours_img_s": batch / median["ours"],
            "theirs_img_s": batch / median["theirs"], "ratio": median["theirs"] / median["ours"],
            "same_noise": same_initial_noise(model, seed, batch),
            "max_abs_diff": (first["ours"] - first["theirs"]).abs().max().item()}


def table(result: dict) -> list[str]:
    """The comparison as markdown table lines."""
    s = result["seconds"]
    lines = ["| sampler | images/s (median) | s per batch (median; min-max) |", "|---|---|---|"]
    for name, label in (("ours", "ours (`dualerase.sampling.sample`)"),
                        ("theirs", "diffusers `DiTPipeline`")):
        t = s[name]
        lines.append(f"| {label} | {result[f'{name}_img_s']:.3g} | {statistics.median(t):.4g}; "
                     f"{min(t):.4g}-{max(t):.4g} |")
    lines.append(f"| **ratio ours / DiTPipeline** | **{result['ratio']:.3f}** | fastest runs: "
                 f"{min(s['theirs']) / min(s['ours']):.3f} |")
    return lines


def summary(result: dict) -> str:
    """One line on the outputs: same initial noise, and the largest image difference."""
    return (f"same initial noise: {'yes' if result['same_noise'] else 'NO'}; max |ours - "
            f"DiTPipeline| over the images in [0, 1]: {result['max_abs_diff']:.3g}")
