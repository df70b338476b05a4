"""The embedded default: scikit-learn's 8x8 handwritten digits and a tiny DiT trained on them."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt, Lt
from tqdm.auto import tqdm

from dualerase.errors import ModelError
from dualerase.models.dit import build_dit, drop_labels, load_dit, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.models.shipped import install_shipped
from dualerase.storage import atomic_path, cache_root, fingerprint

NUM_CLASSES = 10
SIZE = 8


@dataclass
class DigitsRecipe:
    """The config's `digits` group: how the embedded digits DiT is trained (our recipe).

    The trained model is cached under a fingerprint of every value, so changing any of them
    retrains it once."""

    layers: Annotated[int, Gt(0)] = 4
    heads: Annotated[int, Gt(0)] = 4
    head_dim: Annotated[int, Gt(0)] = 16
    patch_size: Annotated[int, Gt(0)] = 2
    # 6000: the EMA (0.999) of a 3000-step run lags its raw weights so much that a few retain steps
    # alone improve it (FID 75 -> 15 unguided): erasure's FID change then measured the base's
    # under-training, not the erasure
    steps: Annotated[int, Gt(0)] = 6000
    batch_size: Annotated[int, Gt(0)] = 128
    # AdamW, weight decay 0: the pretraining optimizer that retain steps reuse
    lr: Annotated[float, Gt(0)] = 1e-3
    ema_decay: Annotated[float, Ge(0)] = 0.999  # the released weights are the EMA, as for DiT
    label_dropout: float = 0.1  # classifier-free guidance training, as DiT
    seed: int = 0
    # train: the fixed stratified train split (80%, `train_test_split`), keeping the held-out 20%
    # unseen by every model; all: every digit (the recipe before the split; the schema's default,
    # so that configs written before this key read as they ran; the digits preset sets train)
    data: Literal["train", "all"] = "all"
    # use the weights shipped inside the package when this recipe and the classifier's are theirs
    # (verified by digest; src/dualerase/weights/manifest.json); false: train and cache them as
    # any recipe
    shipped: bool = True
    # torch's CPU threads while the digits DiT and classifier train (not part of the recipe's
    # fingerprint): 1, as the shipped weights were trained, is within 1.5x of the fastest setting
    # idle and beside other work (docs/performance.md, Threads); null: the run's compute.threads
    train_threads: Annotated[int | None, Gt(0)] = 1
    # a class whose every image is left out of training: the retrained reference of erasing it
    # (`retrained`), its cache folder named after it; null: none
    exclude: Annotated[int | None, Ge(0), Lt(NUM_CLASSES)] = None


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: (N, 1, 8, 8) floats in [-1, 1] (pixel values 0..16 rescaled), labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.tensor(data.target, dtype=torch.long)


def train_test_split(labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0):
    """A fixed stratified split of `labels`' indices: (train indices, test indices), sorted."""
    from sklearn.model_selection import train_test_split as split

    idx = list(range(len(labels)))
    train, test = split(idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy())
    return torch.tensor(sorted(train)), torch.tensor(sorted(test))


def training_set(recipe: DigitsRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the recipe trains on: its split (the held-out one stays unseen), without every
    image of the excluded class (`exclude`: the retrained reference)."""
    x, y = load_digits()
    if recipe.data == "train":
        train, _ = train_test_split(y)
        x, y = x[train], y[train]
    if recipe.exclude is not None:
        keep = y != recipe.exclude
        x, y = x[keep], y[keep]
    return x, y


def train_digits_dit(recipe: DigitsRecipe, progress: bool = True, checkpoint: Path | None = None,
                     checkpoint_every: int = 500):
    """Train the tiny DiT on every digit with DiT's loss and label dropout; return its EMA weights.

    With `checkpoint`, the whole training state (weights, EMA, optimizer, RNGs, step) is saved there
    every `checkpoint_every` steps, and a call that finds one continues from it: a killed training
    loses at most that many steps and ends with the weights of an uninterrupted one."""
    torch.manual_seed(recipe.seed)
    x, y = training_set(recipe)
    model = build_dit(num_classes=NUM_CLASSES, sample_size=SIZE, in_channels=1,
                      patch_size=recipe.patch_size, layers=recipe.layers, heads=recipe.heads,
                      head_dim=recipe.head_dim)
    ema = copy.deepcopy(model).requires_grad_(False)
    loss_fn = DiTLoss(make_scheduler())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    model.train()
    bar = tqdm(range(start, recipe.steps), desc="train digits DiT", disable=not progress,
               initial=start, total=recipe.steps)
    for step in bar:
        idx = torch.randint(0, len(x), (recipe.batch_size,), generator=gen)
        # no random flip (DiT flips ImageNet images): digits are not mirror-symmetric
        batch = x[idx]
        loss = loss_fn(model, (batch, drop_labels(y[idx], recipe.label_dropout, NUM_CLASSES)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - recipe.ema_decay)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (checkpoint is not None and (step + 1) % checkpoint_every == 0
                and step + 1 < recipe.steps):
            with atomic_path(checkpoint) as tmp:
                torch.save({"model": model.state_dict(), "ema": ema.state_dict(),
                            "opt": opt.state_dict(), "gen": gen.get_state(),
                            "rng": torch.get_rng_state(), "step": step + 1}, tmp)
    return ema.eval()


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with `count` torch CPU threads (None: as they are), then put them back."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def recipe_key(recipe: DigitsRecipe) -> dict:
    """The recipe's values that make its model: all but `shipped` and `train_threads`, and `data`
    and `exclude` only when they are not their defaults ("all", None: the recipe before the keys
    existed), so that caches written before them are found."""
    key = asdict(recipe)
    del key["shipped"], key["train_threads"]
    for name, default in (("data", "all"), ("exclude", None)):  # as keys written before them
        if key[name] == default:
            del key[name]
    return key


def dit_folder(recipe: DigitsRecipe) -> Path:
    """Where the digits DiT of `recipe` is cached (it is there once its config.json is); a
    retrained reference's folder names the class it never saw."""
    without = "" if recipe.exclude is None else f"-without-{recipe.exclude}"
    return cache_root() / "digits" / f"dit-{fingerprint(recipe_key(recipe))}{without}"


def classifier_path(recipe) -> Path:
    """Where the digits classifier of `recipe` (a ClassifierRecipe) is cached."""
    return cache_root() / "digits" / f"classifier-{fingerprint(asdict(recipe))}.safetensors"


def prepare_digits_dit(recipe: DigitsRecipe, progress: bool = True) -> Path:
    """The cached digits DiT folder for `recipe`, trained once on first use (resumable)."""
    folder = dit_folder(recipe)
    if recipe.shipped and not (folder / "config.json").exists():
        install_shipped("dit", folder)
    if not (folder / "config.json").exists():
        if progress:
            what = "" if recipe.exclude is None else f" without digit {recipe.exclude}"
            print(f"training the digits model{what} once ({recipe.steps} steps), cached at "
                  f"{folder}", flush=True)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            if (recipe.train_threads or torch.get_num_threads()) > 1 and \
                    load >= max(1.0, (os.cpu_count() or 1) / 2):
                print(f"the machine is busy (load {load:.1f} on {os.cpu_count()} cores): "
                      "--set digits.train_threads=1 trains faster beside other work unless "
                      "GOMP_SPINCOUNT is short (docs/performance.md, Threads)", flush=True)
        partial = folder.with_name(f"{folder.name}.partial.pt")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with torch_threads(recipe.train_threads):
            model = train_digits_dit(recipe, progress, checkpoint=partial)
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe_key(recipe), indent=2))
        os.replace(tmp, folder)
        partial.unlink(missing_ok=True)
    return folder


def prepare_retrained(recipe: DigitsRecipe, forget_class: int, progress: bool = True) -> Path:
    """The retrained reference (RT) of erasing `forget_class`: the digits DiT of `recipe` trained
    again, with the same seed and steps, on its split without every image of that class; trained
    once and cached as the base model is (a killed training resumes).

    Raises:
        ModelError: the cached folder holds a model trained without another class."""
    folder = prepare_digits_dit(dataclasses.replace(recipe, exclude=forget_class, shipped=False),
                                progress)
    recorded = json.loads((folder / "recipe.json").read_text()).get("exclude")
    if recorded != forget_class:
        raise ModelError(f"{folder} holds a model trained without digit {recorded}, not "
                         f"{forget_class}: delete it, and the next run trains the reference again")
    return folder


def load_digits_dit(recipe: DigitsRecipe, progress: bool = True):
    """The digits DiT of `recipe`, trained first if it is not cached."""
    return load_dit(str(prepare_digits_dit(recipe, progress)))


def prepare_digits_classifier(recipe, progress: bool = True, shipped: bool = True,
                              threads: int | None = None) -> tuple[Path, float]:
    """The cached digits classifier for `recipe`, trained once on the train split.

    With `shipped` (config `digits.shipped`), the package's classifier is used where `recipe` is
    its recipe; a training runs on `threads` torch threads (`digits.train_threads`; None: as they
    are). Returns (its path, its test-split accuracy)."""
    from safetensors import safe_open

    from dualerase.metrics.classifier import accuracy, save_classifier, train_classifier

    path = classifier_path(recipe)
    if shipped and not path.exists():
        install_shipped("classifier", path)
    if not path.exists():
        x, y = load_digits()
        train, test = train_test_split(y)
        with torch_threads(threads):
            net = train_classifier(x[train], y[train], recipe, progress)
        with atomic_path(path) as tmp:
            save_classifier(net, tmp, recipe, accuracy(net, x[test], y[test]))
    with safe_open(str(path), "pt") as f:
        return path, float(f.metadata()["test_accuracy"])
