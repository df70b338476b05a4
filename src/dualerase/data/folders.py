"""ImageNet-style image folders: DiT's preprocessing, forget and retain sets, the latent cache."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dualerase.data.classes import Classes, imagenet, name_words
from dualerase.errors import UsageError
from dualerase.storage import atomic_path, cache_root

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def scan(root: Path, classes: Classes) -> dict[int, list[Path]]:
    """The image files of each class index in an ImageNet-style folder `root`.

    Sub-folders are synsets when the model's classes are ImageNet's or a subset of them (any subset
    of its classes), else named after the model's classes (its id2label); a model that names no
    classes gets them in sorted order (then there must be one per class). A folder that does not
    fit raises UsageError, saying which sub-folder and why."""
    check_data_folder(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"--data {root} holds no class sub-folders: give an ImageNet-style train "
                         "folder (one sub-folder of images per class, e.g. n02099601/)")
    if classes.synsets:
        index = {s: i for i, s in enumerate(classes.synsets)}
        unknown = [p.name for p in folders if p.name not in index]
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        if unknown and (len(classes) == 1000 or unknown[0] not in imagenet().synsets):
            raise UsageError(f"--data {root}: sub-folder {unknown[0]!r}{more} is not an ImageNet "
                             "synset: move it out of the data folder, or name class folders by "
                             "synset, e.g. n02099601")
        if unknown:
            name = imagenet().names[imagenet().synsets.index(unknown[0])].split(",")[0]
            raise UsageError(f"--data {root}: sub-folder {unknown[0]!r} ({name}){more} is not one "
                             f"of the model's {len(classes)} classes ({listing(classes)}): give a "
                             "data folder of the model's classes")
        numbered = {index[p.name]: p for p in folders}
    elif classes.named:  # the model's own names (id2label), or the folders' when it has none
        index = {}
        for c, name in enumerate(classes.names):
            for word in name_words(name):
                index.setdefault(word, set()).add(c)
        numbered = {}
        for p in folders:
            found = index.get(p.name.strip().lower(), set())
            # the model's own names repeat: the folder cannot say which class it holds
            if len(found) > 1:
                same = " and ".join(f"{c} ({classes.names[c]!r})" for c in sorted(found))
                raise UsageError(f"--data {root}: sub-folder {p.name!r} names more than one class: "
                                 f"the model's id2label gives classes {same} the same name; give "
                                 "the model distinct class names (its id2label in "
                                 "model_index.json)")
            if len(found) != 1 or min(found) in numbered:
                why = ("is not one of" if not found
                       else f"names the same class as {numbered[min(found)].name!r}, of")
                raise UsageError(f"--data {root}: sub-folder {p.name!r} {why} the model's "
                                 f"{len(classes)} classes ({listing(classes)}): name each class "
                                 "folder after its class, once")
            numbered[min(found)] = p
    else:
        if len(folders) != len(classes):
            raise UsageError(f"--data {root} has {len(folders)} class folders but the model has "
                             f"{len(classes)} classes: give a data folder with one sub-folder per "
                             "model class")
        numbered = dict(enumerate(folders))
    files = {c: sorted(f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS)
             for c, p in numbered.items()}
    if not any(files.values()):
        raise UsageError(f"--data {root} holds no images (looked for "
                         f"{', '.join(sorted(EXTENSIONS))})")
    return files


def check_data_folder(root: Path) -> None:
    """Refuse (UsageError) a --data `root` that is not a folder."""
    if not root.is_dir():
        raise UsageError(f"--data {root} is not a folder: give an ImageNet-style train folder (one "
                         "sub-folder of images per class)")


def check_writable(path: Path, option: str, *, in_parent: bool = False) -> None:
    """Fail in one line (UsageError), before any expensive work, when `path` cannot be written.

    `path` is a folder to create or fill; with `in_parent`, a file or folder written next to it and
    renamed onto it. A probe file is created, synced and removed in the folder that will be
    written, or its nearest existing ancestor (no permission, a read-only or full file system, a
    regular file on the way); `option` names the path in the message."""
    folder = path.parent if in_parent else path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder: choose another "
                         f"{option}")
    try:
        _probe(folder)
    except OSError as e:
        raise UsageError(f"{option} {path} cannot be written: creating a file in {folder} failed "
                         f"({e.strerror or type(e).__name__}): choose a writable location, or free "
                         "space or fix permissions there") from None


def check_cache() -> None:
    """Probe the cache (DUALERASE_HOME) before any work, as --output.

    It takes trained models, masks and base scores."""
    check_writable(cache_root(), "DUALERASE_HOME (the cache)")


def _probe(folder: Path) -> None:
    """Create, write (4 KiB, synced, so that a full disk shows), and remove a file in `folder`."""
    probe = folder / f".dualerase-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(4096))
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)


def listing(classes: Classes, most: int = 6) -> str:
    """The model's first classes, for a message: "0 golden retriever (n02099601), 1 tench, ..."."""
    shown = [f"{c} {classes.short(c)}" + (f" ({classes.synsets[c]})" if classes.synsets else "")
             for c in range(min(most, len(classes)))]
    return ", ".join(shown) + (", ..." if len(classes) > most else "")


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """DiT's (ADM's) preprocessing of `image` to a `size` x `size` square.

    Halve with a box filter while the short side is >= 2 * size, resize the short side to `size`
    (bicubic), then cut the central square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode` ("L" or "RGB").

    16-bit greyscale (PNG "I;16", or "I") is scaled from 0..65535 to 0..255 first: PIL's convert
    clips it, so a mid-grey 16-bit PNG would decode as white."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257), 0, 255).astype(np.uint8), "L")
    return image.convert(mode)


def load_images(files: list[Path], size: int, channels: int, what: str,
                progress: bool = True) -> tuple[torch.Tensor, list[int]]:
    """Decoded, center-cropped images in [-1, 1], and the indices of the files they came from.

    The images are (N, `channels`, `size`, `size`); `what` names them in the progress bar and
    messages. Files that cannot be decoded are skipped with a warning naming them; none left raises
    UsageError."""
    mode = {1: "L", 3: "RGB"}[channels]
    images, kept, bad = [], [], []
    for i, f in enumerate(tqdm(files, desc=f"load {what}", disable=not progress)):
        try:
            with Image.open(f) as im:
                arr = np.asarray(center_crop(to_mode(im, mode), size), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(f)
            continue
        images.append(torch.from_numpy(arr.reshape(size, size, channels).copy()).permute(2, 0, 1))
        kept.append(i)
    if not images:
        raise UsageError(f"no decodable images in the {what} ({len(files)} file(s), e.g. "
                         f"{files[0]}): replace the broken files or choose another class")
    if bad:
        print(f"warning: skipped {len(bad)} undecodable image(s) of the {what}: "
              f"{', '.join(str(b) for b in bad[:5])}{' ...' if len(bad) > 5 else ''}",
              file=sys.stderr)
    return torch.stack(images).float() / 127.5 - 1.0, kept


def forget_files(files: dict[int, list[Path]], forget_class: int, limit: int, classes: Classes,
                 root: Path):
    """The forget set: the class's own folder (its first `limit` images, 0: all).

    No image of the class raises UsageError."""
    chosen = files.get(forget_class, [])
    if not chosen:
        where = (classes.synsets[forget_class] if classes.synsets
                 else f"the folder of class {forget_class}")
        raise UsageError(f"no images of class {forget_class} ({classes.short(forget_class)}) in "
                         f"--data {root} (looked in {where}/): add them, or erase another class")
    return chosen[:limit] if limit else chosen


def retain_files(files: dict[int, list[Path]], forget_class: int, count: int,
                 seed: int) -> list[tuple[int, Path]]:
    """The retain set: `count` (class, file) pairs drawn from every other class (0: all of them).

    The draw is seeded by `seed`; no image of another class raises UsageError."""
    pool = [(c, f) for c, fs in sorted(files.items()) if c != forget_class for f in fs]
    if not pool:
        raise UsageError("--data holds no images of any class but the forget class: the retain set "
                         "would be empty")
    if count and count < len(pool):
        pool = sorted(random.Random(seed).sample(pool, count))
    return pool


@torch.no_grad()
def encode(images: torch.Tensor, vae, seed: int, batch_size: int = 32, progress: bool = True,
           what: str = "") -> torch.Tensor:
    """Latents of the images, then of their mirror images (DiT's random flip), scaled as DiT trains.

    The VAE's sampling is seeded by `seed`; `what` names the progress bar."""
    gen = torch.Generator(vae.device).manual_seed(seed)
    out = []
    for view in (images, images.flip(-1)):
        for i in tqdm(range(0, len(view), batch_size), desc=f"encode {what}", disable=not progress):
            x = view[i:i + batch_size].to(vae.device, vae.dtype)
            out.append((vae.encode(x).latent_dist.sample(gen)
                        * vae.config.scaling_factor).float().cpu())
    # the VAE may return channels-last: store what a cache read gives back
    return torch.cat(out).contiguous()


def with_flips(images: torch.Tensor) -> torch.Tensor:
    """Each image, then its mirror image: DiT's random flip in uniform batches (pixel space)."""
    return torch.cat([images, images.flip(-1)])


def cached(path: Path | None, make) -> dict[str, torch.Tensor]:
    """`make()` (a dict of tensors), made once: with a cache `path`, saved atomically, read back."""
    if path is not None and path.exists():
        return load_file(str(path))
    tensors = make()
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    return tensors
