"""What one or more models generate per class, side by side, with the same noise (sample-grid)."""
from __future__ import annotations

from pathlib import Path

import torch

from dualerase.config import Config
from dualerase.data.classes import resolve_class
from dualerase.data.folders import check_cache, check_writable
from dualerase.errors import UsageError
from dualerase.launch import processes
from dualerase.models.digits import load_digits_dit, prepare_digits_dit
from dualerase.models.dit import SCHEDULER_NAMES, num_classes, sampler_scheduler
from dualerase.models.pretrained import load_model, load_pretrained, match_training
from dualerase.reports.summary import sample_grid, save_image
from dualerase.runs.workload import check_sampler, classes_of, model_settings
from dualerase.sampling import sample, to_uint8


def load_models(specs: list[str], cfg, progress: bool):
    """{spec: transformer} and the base model's VAE.

    `base` is the config's base model, anything else a model folder or an erase-class output
    folder."""
    if cfg.model.source == "digits":
        folder = prepare_digits_dit(cfg.digits, progress)
        base = match_training(load_digits_dit(cfg.digits), folder, **model_settings(cfg))
        vae = None
    else:
        pretrained = load_pretrained(cfg.model.path, variant=cfg.model.variant,
                                     **model_settings(cfg))
        base, vae = pretrained.transformer, pretrained.vae
    models = {}
    for spec in specs:
        path = Path(spec)
        if spec != "base" and (path / "model").is_dir():
            path = path / "model"
        is_model = any((folder / "config.json").exists() for folder in (path, path / "transformer"))
        if spec != "base" and not is_model:
            raise UsageError(f"{spec!r} is neither 'base', a model folder nor an erase-class "
                             "output folder")
        models[spec] = base if spec == "base" else load_model(path)  # as recorded there
    return models, vae


def draw(cfg: Config, models: list[str], output: Path, *, per_class: int = 8,
         classes: list | None = None, mark: int | str | None = None, seed: int = 0,
         progress: bool = True) -> str:
    """Sample each class from every model with the same noise, write the grid, say what was drawn.

    `per_class` images of each class (all, at most eval.grid_classes, or `classes`) go to `output`,
    the class `mark` framed in red.

    Raises:
        UsageError: a bad count, output, class or model, before any sampling.
    """
    if per_class < 1:
        raise UsageError(f"--per-class must be >= 1, got {per_class}")
    output = Path(output)
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder: give the PNG file to write, e.g. "
                         f"{output}/grid.png")
    check_writable(output, "--output", in_parent=True)  # before any sampling
    check_cache()  # the digits models are trained into it
    known = classes_of(cfg)
    marked = resolve_class(str(mark), known) if mark is not None else None
    if classes:
        shown = [resolve_class(str(c), known) for c in classes]
    else:
        shown = list(range(min(len(known), cfg.eval.grid_classes)))
    check_sampler(cfg)
    loaded, vae = load_models(list(models), cfg, progress)
    for spec, model in loaded.items():  # one grid, one class set: a row per class for every model
        if num_classes(model) != len(known):
            raise UsageError(f"{spec} has {num_classes(model)} classes but the base model has "
                             f"{len(known)}: put models of one class set in one grid (draw the "
                             "others with their own --model or --config)")
    device = processes().device
    labels = torch.tensor(shown).repeat_interleave(per_class)
    panels = {}
    sample_cfg = cfg.sample
    for spec, model in loaded.items():
        scheduler = sampler_scheduler(sample_cfg.scheduler, sample_cfg.timestep_spacing)
        images = sample(model.to(device), scheduler, labels, num_steps=sample_cfg.steps,
                        guidance=sample_cfg.guidance, seed=seed,
                        guidance_channels=sample_cfg.guidance_channels,
                        batch_size=sample_cfg.batch_size,
                        vae=vae.to(device) if vae is not None else None, progress=progress,
                        desc=spec)
        panels[spec] = to_uint8(images)
    output.parent.mkdir(parents=True, exist_ok=True)
    names = [known.short(c) for c in range(len(known))]
    save_image(sample_grid(panels, labels, names, marked=marked), output)
    return (f"wrote {output}: {len(loaded)} model(s) x {len(shown)} classes x {per_class}, "
            f"{SCHEDULER_NAMES[sample_cfg.scheduler]} {sample_cfg.steps} steps, guidance "
            f"{sample_cfg.guidance}, seed {seed}")
