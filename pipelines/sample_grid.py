"""sample-grid: what one or more models generate per class, side by side, with the same noise."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from eval.report import sample_grid, save_image
from pipelines.classes import resolve_class
from pipelines.config import CommandParser, load_config
from pipelines.data import check_writable
from pipelines.digits import load_digits_dit, prepare_digits_dit
from pipelines.dit import SCHEDULER_NAMES, sampler_scheduler
from pipelines.errors import ConfigError, UsageError
from pipelines.pretrained import load_model, load_pretrained, match_training
from pipelines.sampling import sample, to_uint8
from pipelines.workload import check_sampler, classes_of, is_main_process, model_settings, processes


def load_models(specs: list[str], cfg, progress: bool):
    """{spec: transformer} and the base model's VAE; `base` is the config's base model, anything else a model folder or
    an erase-class output folder."""
    if cfg.model.source == "digits":
        folder = prepare_digits_dit(cfg.digits, progress)
        base, vae = match_training(load_digits_dit(cfg.digits), folder, **model_settings(cfg)), None
    else:
        pretrained = load_pretrained(cfg.model.path, **model_settings(cfg))
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


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="sample-grid", description=__doc__)
    parser.add_argument("models", nargs="*", default=["base"],
                        help="'base', model folders or erase-class output folders (default: base)")
    parser.add_argument("--config", help="preset name or YAML path (default: digits; imagenet with --model)")
    parser.add_argument("--model", help="base DiT in diffusers layout: hub id or local folder (sets model.source)")
    parser.add_argument("--output", type=Path, default=Path("grid.png"), help="PNG to write (default: grid.png)")
    parser.add_argument("--per-class", type=int, default=8, help="images per class (default: 8)")
    parser.add_argument("--classes", nargs="+", help="classes to show, as ids, synsets or names (default: all, at "
                        "most eval.grid_classes)")
    parser.add_argument("--mark", help="class to frame in red (e.g. the erased one)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed, the same for every model (default: 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    try:
        args = parser.parse_args(argv)
        if args.per_class < 1:
            raise UsageError(f"--per-class must be >= 1, got {args.per_class}")
        if args.output.is_dir():
            raise UsageError(f"--output {args.output} is a folder: give the PNG file to write, e.g. "
                             f"{args.output}/grid.png")
        check_writable(args.output, "--output", in_parent=True)  # before any sampling
        model_args = ["model.source=diffusers", f"model.path={args.model}"] if args.model else []
        cfg = load_config(args.config or ("imagenet" if args.model else "digits"), model_args + args.overrides)
        classes = classes_of(cfg)
        marked = resolve_class(args.mark, classes) if args.mark is not None else None
        shown = [resolve_class(c, classes) for c in args.classes] if args.classes else \
            list(range(min(len(classes), cfg.eval.grid_classes)))
        check_sampler(cfg)
        models, vae = load_models(args.models, cfg, not args.quiet)
    except (ConfigError, UsageError) as e:
        if is_main_process():  # under a launcher every process fails alike: one line, not one per process
            print(f"sample-grid: error: {e}", file=sys.stderr)
        return 2
    device = processes().device
    labels = torch.tensor(shown).repeat_interleave(args.per_class)
    panels = {}
    for spec, model in models.items():
        images = sample(model.to(device), sampler_scheduler(cfg.sample.scheduler, cfg.sample.timestep_spacing), labels,
                        num_steps=cfg.sample.steps, guidance=cfg.sample.guidance, seed=args.seed,
                        guidance_channels=cfg.sample.guidance_channels, batch_size=cfg.sample.batch_size,
                        vae=vae.to(device) if vae is not None else None, progress=not args.quiet, desc=spec)
        panels[spec] = to_uint8(images)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_image(sample_grid(panels, labels, [classes.short(c) for c in range(len(classes))], marked=marked),
               args.output)
    print(f"wrote {args.output}: {len(models)} model(s) x {len(shown)} classes x {args.per_class}, "
          f"{SCHEDULER_NAMES[cfg.sample.scheduler]} {cfg.sample.steps} steps, guidance {cfg.sample.guidance}, "
          f"seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
