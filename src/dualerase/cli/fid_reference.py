"""fid-reference: build the FID reference folder, real images of the retained classes, from an
ImageNet-style folder."""
from __future__ import annotations

import sys
from pathlib import Path

from dualerase.cli import CommandParser, fail, parse
from dualerase.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    """Run fid-reference with `argv` (default: the command line's); returns the exit code."""
    parser = CommandParser(prog="fid-reference", description=__doc__)
    parser.add_argument("--data", type=Path, required=True,
                        help="ImageNet-style train folder (one sub-folder per class)")
    parser.add_argument("--output", type=Path, required=True, help="reference folder to write")
    parser.add_argument("--count", type=int, default=10000,
                        help="images to draw (default: 10000, as the paper)")
    parser.add_argument("--exclude", nargs="*", default=[],
                        help="classes left out (the forget class): ids, synsets or names")
    parser.add_argument("--size", type=int, default=256,
                        help="side of the center crop in pixels (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draw (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing reference folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parse(parser, argv)
    if isinstance(args, int):  # --help, --version or a bad argument: answered before torch loads
        return args
    from dualerase.data.classes import resolve_class
    from dualerase.data.folders import check_writable
    from dualerase.data.reference import build, folder_classes

    try:
        if args.count < 1 or args.size < 1:
            raise UsageError("--count and --size must be >= 1")
        if args.output.exists() and not args.output.is_dir():
            raise UsageError(f"--output {args.output} is a file: give the reference folder to "
                             "write")
        # built next to it, then renamed onto it
        check_writable(args.output, "--output", in_parent=True)
        if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
            raise UsageError(f"{args.output} is not empty: pass --overwrite to replace it, or "
                             "choose another --output")
        classes = folder_classes(args.data)
        exclude = sorted({resolve_class(c, classes) for c in args.exclude})
        manifest = build(args.data, args.output, count=args.count, exclude=exclude,
                         size=args.size, seed=args.seed, progress=not args.quiet)
    except UsageError as e:
        return fail("fid-reference", e)
    print(f"wrote {args.output}: {manifest['count']} images of {manifest['classes']} classes at "
          f"{args.size} px (excluded: {', '.join(classes.short(c) for c in exclude) or 'none'}); "
          f"use --set eval.fid_reference={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
