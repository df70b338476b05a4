"""fid-reference: build the FID reference folder, real images of the retained classes, from an ImageNet-style folder."""
from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from dualerase.cli import CommandParser
from dualerase.data.classes import Classes, imagenet, resolve_class
from dualerase.data.folders import center_crop, check_writable, scan, to_mode
from dualerase.errors import UsageError
from dualerase.launch import is_main_process
from dualerase.storage import replace_folder


def folder_classes(root: Path) -> Classes:
    """ImageNet's vocabulary when the sub-folders are synsets, else the sub-folder names in sorted order."""
    if not root.is_dir():
        raise UsageError(f"--data {root} is not a folder: give an ImageNet-style train folder")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = imagenet()
    stray = [n for n in names if n not in set(classes.synsets)]
    if stray and len(stray) < len(names):  # synset folders and others (lost+found): never renumber the classes
        more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
        raise UsageError(f"--data {root}: sub-folder {stray[0]!r}{more} is not an ImageNet synset, but the others are: "
                         "move it out of the data folder, or name every class folder by its synset")
    return classes if names and not stray else Classes(names=names)


def build(data: Path, output: Path, *, count: int, exclude: list[int], size: int, seed: int,
          progress: bool = True) -> dict:
    """Draw `count` images at random from every class but `exclude`, center-crop them to `size` (DiT's preprocessing),
    and write them as PNG under output/<class folder>/, with reference.json describing the set."""
    classes = folder_classes(data)
    files = scan(data, classes)
    pool = [(c, f) for c, fs in sorted(files.items()) if c not in exclude for f in fs]
    if not pool:
        raise UsageError(f"--data {data} holds no images outside the excluded classes")
    chosen = sorted(random.Random(seed).sample(pool, min(count, len(pool))))
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    written = 0
    for _, f in tqdm(chosen, desc="fid reference", disable=not progress):
        try:
            with Image.open(f) as im:
                image = center_crop(to_mode(im, "RGB"), size)
        except (OSError, ValueError):
            print(f"fid-reference: warning: skipped undecodable {f}", file=sys.stderr)
            continue
        target = tmp / f.parent.name / f"{f.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
        written += 1
    manifest = {"data": str(data.resolve()), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "count": written,
                "classes": len({c for c, _ in chosen}), "excluded": exclude,
                "excluded_folders": [(classes.synsets or classes.names)[c] for c in exclude],  # ids differ by model
                "size": size, "seed": seed, "preprocessing": "DiT center crop (box halving, bicubic, central square)"}
    (tmp / "reference.json").write_text(json.dumps(manifest, indent=2) + "\n")
    replace_folder(tmp, output)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="fid-reference", description=__doc__)
    parser.add_argument("--data", type=Path, required=True,
                        help="ImageNet-style train folder (one sub-folder per class)")
    parser.add_argument("--output", type=Path, required=True, help="reference folder to write")
    parser.add_argument("--count", type=int, default=10000, help="images to draw (default: 10000, as the paper)")
    parser.add_argument("--exclude", nargs="*", default=[], help="classes left out (the forget class): ids, synsets or "
                        "names")
    parser.add_argument("--size", type=int, default=256, help="side of the center crop in pixels (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draw (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing reference folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    try:
        args = parser.parse_args(argv)
        if args.count < 1 or args.size < 1:
            raise UsageError("--count and --size must be >= 1")
        if args.output.exists() and not args.output.is_dir():
            raise UsageError(f"--output {args.output} is a file: give the reference folder to write")
        check_writable(args.output, "--output", in_parent=True)  # built next to it, then renamed onto it
        if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
            raise UsageError(f"{args.output} is not empty: pass --overwrite to replace it, or choose another --output")
        classes = folder_classes(args.data)
        exclude = sorted({resolve_class(c, classes) for c in args.exclude})
        manifest = build(args.data, args.output, count=args.count, exclude=exclude, size=args.size, seed=args.seed,
                         progress=not args.quiet)
    except UsageError as e:
        if is_main_process():  # under a launcher every process fails alike: one line, not one per process
            print(f"fid-reference: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {manifest['count']} images of {manifest['classes']} classes at {args.size} px "
          f"(excluded: {', '.join(classes.short(c) for c in exclude) or 'none'}); use --set eval.fid_reference="
          f"{args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
