"""sample-grid: what one or more models generate per class, side by side, with the same noise."""
from __future__ import annotations

import sys
from pathlib import Path

from dualerase.cli import CommandParser, fail, parse
from dualerase.errors import ConfigError, UsageError


def main(argv: list[str] | None = None) -> int:
    """Run sample-grid with `argv` (default: the command line's); returns the exit code."""
    parser = CommandParser(prog="sample-grid", description=__doc__)
    parser.add_argument("models", nargs="*", default=["base"],
                        help="'base', model folders or erase-class output folders (default: base)")
    parser.add_argument("--config",
                        help="preset name or YAML path (default: digits; imagenet with --model)")
    parser.add_argument("--model", help="base DiT in diffusers layout: hub id or local folder "
                        "(sets model.source)")
    parser.add_argument("--output", type=Path, default=Path("grid.png"),
                        help="PNG to write (default: grid.png)")
    parser.add_argument("--per-class", type=int, default=8, help="images per class (default: 8)")
    parser.add_argument("--classes", nargs="+", help="classes to show, as ids, synsets or names "
                        "(default: all, at most eval.grid_classes)")
    parser.add_argument("--mark", help="class to frame in red (e.g. the erased one)")
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed, the same for every model (default: 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set sample.steps=50 (repeatable; "
                             "the models are drawn with the config's sampler)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parse(parser, argv)
    if isinstance(args, int):  # --help, --version or a bad argument: answered before torch loads
        return args
    from dualerase.config import load_config, model_overrides
    from dualerase.runs.grid import draw

    try:
        cfg = load_config(args.config or ("imagenet" if args.model else "digits"),
                          model_overrides(args.model) + args.overrides)
        done = draw(cfg, args.models, args.output, per_class=args.per_class, classes=args.classes,
                    mark=args.mark, seed=args.seed, progress=not args.quiet)
    except (ConfigError, UsageError) as e:
        return fail("sample-grid", e)
    print(done)
    return 0

if __name__ == "__main__":
    sys.exit(main())
