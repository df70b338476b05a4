"""The FID reference set: real images of the retained classes, preprocessed as DiT's are.

They are drawn from an ImageNet-style train folder; `fid-reference` writes the set,
eval.fid_reference reads it."""
from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from dualerase.data.classes import Classes, imagenet
from dualerase.data.folders import center_crop, scan, to_mode
from dualerase.errors import UsageError
from dualerase.storage import replace_folder


def folder_classes(root: Path) -> Classes:
    """ImageNet's vocabulary when the sub-folders are synsets, else the sub-folder names, sorted.

    Raises UsageError for a `root` that is no folder, or synset folders mixed with others."""
    if not root.is_dir():
        raise UsageError(f"--data {root} is not a folder: give an ImageNet-style train folder")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = imagenet()
    stray = [n for n in names if n not in set(classes.synsets)]
    # synset folders and others (lost+found): never renumber the classes
    if stray and len(stray) < len(names):
        more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
        raise UsageError(f"--data {root}: sub-folder {stray[0]!r}{more} is not an ImageNet synset, "
                         "but the others are: move it out of the data folder, or name every class "
                         "folder by its synset")
    return classes if names and not stray else Classes(names=names)


def build(data: Path, output: Path, *, count: int, exclude: list[int], size: int, seed: int,
          progress: bool = True) -> dict:
    """Build the reference folder `output` from the train folder `data`; returns its manifest.

    Draw `count` images at random (by `seed`) from every class but `exclude`, center-crop them to
    `size` (DiT's preprocessing), and write them as PNG under output/<class folder>/, with
    reference.json (the manifest) describing the set. Undecodable images are skipped with a
    warning; no image outside `exclude` raises UsageError."""
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
    manifest = {"data": str(data.resolve()), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "count": written, "classes": len({c for c, _ in chosen}), "excluded": exclude,
                # ids differ by model
                "excluded_folders": [(classes.synsets or classes.names)[c] for c in exclude],
                "size": size, "seed": seed,
                "preprocessing": "DiT center crop (box halving, bicubic, central square)"}
    (tmp / "reference.json").write_text(json.dumps(manifest, indent=2) + "\n")
    replace_folder(tmp, output)
    return manifest
