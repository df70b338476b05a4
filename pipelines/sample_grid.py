"""sample-grid: what one or more models generate for every class, side by side, with the same noise."""
from __future__ import annotations

import sys
from pathlib import Path

from eval.report import sample_grid, save_image
from pipelines.config import CommandParser, ConfigError, UsageError, load_config
from pipelines.dit import load_dit, make_scheduler
from pipelines.erase_class import DIGIT_NAMES, prepare_digits, resolve_class
from pipelines.sampling import class_labels, sample, to_uint8


def load_model(spec: str, base):
    """`base` is the config's base model; otherwise a model folder or an erase-class output folder."""
    if spec == "base":
        return base
    path = Path(spec)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    if not (path / "config.json").exists():
        raise UsageError(f"{spec!r} is neither 'base', a model folder nor an erase-class output folder")
    return load_dit(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="sample-grid", description=__doc__)
    parser.add_argument("models", nargs="*", default=["base"],
                        help="'base', model folders or erase-class output folders (default: base)")
    parser.add_argument("--config", default="digits", help="preset name or YAML path (default: digits)")
    parser.add_argument("--output", type=Path, default=Path("grid.png"), help="PNG to write (default: grid.png)")
    parser.add_argument("--per-class", type=int, default=8, help="images per class (default: 8)")
    parser.add_argument("--mark", help="class to frame in red (e.g. the erased one)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed, the same for every model (default: 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    try:
        args = parser.parse_args(argv)
        if args.per_class < 1:
            raise UsageError(f"--per-class must be >= 1, got {args.per_class}")
        cfg = load_config(args.config, args.overrides)
        marked = resolve_class(args.mark, DIGIT_NAMES) if args.mark is not None else None
        w = prepare_digits(cfg, not args.quiet)
        models = {spec: load_model(spec, w.model) for spec in args.models}
    except (ConfigError, UsageError) as e:
        print(f"sample-grid: error: {e}", file=sys.stderr)
        return 2
    labels = class_labels(w.num_classes, args.per_class)
    panels = {}
    for spec, model in models.items():
        images = sample(model, make_scheduler(), labels, num_steps=cfg.sample.steps, guidance=cfg.sample.guidance,
                        seed=args.seed, batch_size=cfg.sample.batch_size, progress=not args.quiet, desc=spec)
        panels[spec] = to_uint8(images)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_image(sample_grid(panels, labels, w.class_names, marked=marked), args.output)
    print(f"wrote {args.output}: {len(models)} model(s) x {w.num_classes} classes x {args.per_class}, "
          f"DDPM {cfg.sample.steps} steps, guidance {cfg.sample.guidance}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
