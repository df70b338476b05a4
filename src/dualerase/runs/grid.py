"""What one or more models generate per class, side by side, with the same noise (the sample-grid command)."""
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
    """{spec: transformer} and the base model's VAE; `base` is the config's base model, anything else a model folder or
    an erase-class output folder."""
    if cfg.model.source == "digits":
        folder = prepare_digits_dit(cfg.digits, progress)
        base, vae = match_training(load_digits_dit(cfg.digits), folder, **model_settings(cfg)), None
    else:
        pretrained = load_pretrained(cfg.model.path, variant=cfg.model.variant, **model_settings(cfg))
        base, vae = pretrained.transformer, pretrained.vae
    models = {}
    for spec in specs:
        path = Path(spec)
        if spec != "base" and (path / "model").is_dir():
            path = path / "model"
        if spec != "base" and not ((path / "config.json").exists() or (path / "transformer" / "config.json").exists()):
            raise UsageError(f"{spec!r} is neither 'base', a model folder nor an erase-class output folder")
        models[spec] = base if spec == "base" else load_model(path)  # as recorded there
    return models, vae


def draw(cfg: Config, models: list[str], output: Path, *, per_class: int = 8, classes: list | None = None,
         mark: int | str | None = None, seed: int = 0, progress: bool = True) -> str:
    """Sample `per_class` images of each class (all, at most eval.grid_classes, or `classes`) from every model with
    the same noise, write the grid to `output` (the class `mark` framed in red), and say what was drawn."""
    if per_class < 1:
        raise UsageError(f"--per-class must be >= 1, got {per_class}")
    output = Path(output)
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder: give the PNG file to write, e.g. {output}/grid.png")
    check_writable(output, "--output", in_parent=True)  # before any sampling
    check_cache()  # the digits models are trained into it
    known = classes_of(cfg)
    marked = resolve_class(str(mark), known) if mark is not None else None
    shown = [resolve_class(str(c), known) for c in classes] if classes else \
        list(range(min(len(known), cfg.eval.grid_classes)))
    check_sampler(cfg)
    loaded, vae = load_models(list(models), cfg, progress)
    for spec, model in loaded.items():  # one grid holds one class set: rows are classes, the same for every model
        if num_classes(model) != len(known):
            raise UsageError(f"{spec} has {num_classes(model)} classes but the base model has {len(known)}: put models "
                             "of one class set in one grid (draw the others with their own --model or --config)")
    device = processes().device
    labels = torch.tensor(shown).repeat_interleave(per_class)
    panels = {}
    for spec, model in loaded.items():
        images = sample(model.to(device), sampler_scheduler(cfg.sample.scheduler, cfg.sample.timestep_spacing), labels,
                        num_steps=cfg.sample.steps, guidance=cfg.sample.guidance, seed=seed,
                        guidance_channels=cfg.sample.guidance_channels, batch_size=cfg.sample.batch_size,
                        vae=vae.to(device) if vae is not None else None, progress=progress, desc=spec)
        panels[spec] = to_uint8(images)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(sample_grid(panels, labels, [known.short(c) for c in range(len(known))], marked=marked), output)
    return (f"wrote {output}: {len(loaded)} model(s) x {len(shown)} classes x {per_class}, "
            f"{SCHEDULER_NAMES[cfg.sample.scheduler]} {cfg.sample.steps} steps, guidance {cfg.sample.guidance}, "
            f"seed {seed}")
