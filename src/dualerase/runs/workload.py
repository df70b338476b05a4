"""What an erasure works on: the base model, its real images per class, and the scorer of its
samples; and the `Job` that carries a run's workload, config and class through `runs/`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from dualerase.config import Config
from dualerase.data.classes import Classes, for_model
from dualerase.data.folders import (
    cached,
    check_data_folder,
    encode,
    forget_files,
    load_images,
    retain_files,
    scan,
    with_flips,
)
from dualerase.errors import UsageError
from dualerase.launch import processes
from dualerase.metrics.classifier import load_classifier
from dualerase.metrics.fid import DigitsScorer
from dualerase.metrics.imagenet import (
    EvalError,
    ImageNetScorer,
    check_classifier,
    check_reference,
    load_timm_classifier,
)
from dualerase.metrics.scorer import Scorer
from dualerase.models.digits import (
    NUM_CLASSES,
    load_digits,
    load_digits_dit,
    prepare_digits_classifier,
    prepare_digits_dit,
    train_test_split,
)
from dualerase.models.pretrained import (
    Pretrained,
    dit_config,
    id2label,
    load_pretrained,
    locate,
    match_training,
)
from dualerase.storage import cache_root, file_digest, file_stamp, fingerprint


class RealData(NamedTuple):
    """Real forget and retain images (in the model's input space) with their labels.

    `key` identifies exactly this data."""

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    key: str


@dataclass
class Workload:
    """A base model with its classes, real data and scorer.

    `real_data(forget_class, cfg, progress)` gives the `RealData` of that class (latents for a
    latent model)."""

    model: torch.nn.Module
    model_id: str
    classes: Classes
    scorer: Scorer
    real_data: Callable
    vae: torch.nn.Module | None = None
    pretrained: Pretrained | None = None

    @property
    def num_classes(self) -> int:
        """How many classes the model draws (the null class not counted)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Each class's short name, in class order."""
        return [self.classes.short(c) for c in range(self.num_classes)]


@dataclass(frozen=True)
class Job:
    """One run's inputs: its workload, its config, the class to erase, and progress bars or not.

    Passed through `runs/` in place of the `(w, cfg, forget_class)` trio."""

    w: Workload
    cfg: Config
    forget_class: int
    progress: bool = True


DIGITS = Classes(names=[f"digit {c}" for c in range(NUM_CLASSES)])


def classes_of(cfg: Config) -> Classes:
    """The base model's classes, read without loading its weights: a bad class fails at once."""
    if cfg.model.source == "digits":
        return DIGITS
    root = locate(cfg.model.path)
    _, config = dit_config(root)
    data = Path(cfg.data.path).expanduser() if cfg.data.path else None
    folders = None
    if data and data.is_dir():  # the class folders as data.scan sees them
        folders = sorted(p.name for p in data.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
    return for_model(config["num_embeds_ada_norm"], id2label(root), folders)


def model_settings(cfg: Config) -> dict:
    """`match_training`'s arguments: embedders, timestep frequencies and LayerNorm eps."""
    return {"tie": cfg.model.tie_embedders, "timestep_shift": cfg.model.timestep_shift,
            "norm_eps": cfg.model.norm_eps}


def check_sampler(cfg: Config) -> None:
    """Refuse a sample.guidance_channels beyond the base model's epsilon channels.

    The channels are read from the model's config, without loading its weights."""
    if cfg.sample.guidance_channels is None:
        return
    if cfg.model.source == "digits":
        channels = 1
    else:
        channels = dit_config(locate(cfg.model.path))[1]["in_channels"]
    if cfg.sample.guidance_channels > channels:
        raise UsageError(f"sample.guidance_channels {cfg.sample.guidance_channels} exceeds the "
                         f"model's {channels} epsilon channels: set it to at most that, or null "
                         "(all)")


def prepare(cfg: Config, progress: bool = True) -> Workload:
    """The workload the config names, on this process's device.

    The embedded digits default (`prepare_digits`), or a diffusers DiT with its data folder
    (`prepare_diffusers`); bad settings or data raise UsageError before anything is loaded."""
    if cfg.compute.threads is not None:
        torch.set_num_threads(cfg.compute.threads)
    state = processes()
    check_sampler(cfg)
    # the main process trains / encodes and caches; the others then read
    with state.main_process_first():
        if cfg.model.source == "digits":
            w = prepare_digits(cfg, progress and state.is_main_process)
        else:
            w = prepare_diffusers(cfg, progress and state.is_main_process)
    use_tf32(cfg.compute.tf32)
    w.model.to(state.device)
    if cfg.compute.compile:
        w.model.compile()
    if w.vae is not None:
        w.vae.to(state.device)
    return w


def use_tf32(on: bool) -> None:
    """TF32 (on) or IEEE float32 (off) for CUDA float32 matmuls and cuDNN convolutions."""
    torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"


def prepare_digits(cfg: Config, progress: bool = True) -> Workload:
    """The digits DiT and the digits classifier, each trained once and cached."""
    d = cfg.digits
    folder = prepare_digits_dit(d, progress)
    clf_path, clf_acc = prepare_digits_classifier(cfg.classifier, progress, d.shipped,
                                                  d.train_threads)
    x, y = load_digits()
    xs, ys, key = x, y, "sklearn digits"
    if cfg.digits.data == "train":  # erasure too leaves the held-out split unseen
        seen = train_test_split(y)[0]
        xs, ys, key = x[seen], y[seen], "sklearn digits, train split"

    def real_data(forget_class, cfg, progress=True):
        """The digits of `forget_class`, and all the others, of the split the model saw."""
        is_forget = ys == forget_class
        return RealData(xs[is_forget], ys[is_forget], xs[~is_forget], ys[~is_forget], key=key)

    content = fingerprint(sorted((f.name, file_digest(f)) for f in folder.iterdir() if f.is_file()))
    model = match_training(load_digits_dit(cfg.digits), folder, **model_settings(cfg))
    return Workload(model=model, model_id=f"digits/{folder.name}#{content}", classes=DIGITS,
                    scorer=DigitsScorer(load_classifier(clf_path), clf_path, clf_acc, x, y),
                    real_data=real_data)


def check_inputs(cfg: Config) -> None:
    """Check the data folder, classifier and FID reference of a diffusers run, loading nothing.

    What `prepare` refuses first, so that --dry-run refuses it too.

    Raises:
        UsageError: one of them is missing or unusable."""
    if cfg.model.source == "digits":
        return
    if cfg.data.path is None:
        raise UsageError(f"model {cfg.model.path} needs its training images: pass --data "
                         "<ImageNet-style train folder>")
    if cfg.eval.fid_reference is None:
        raise UsageError("FID needs a reference folder: build one with `fid-reference --data "
                         "<train folder> --output <folder>`, then pass --set "
                         "eval.fid_reference=<folder>")
    check_data_folder(Path(cfg.data.path).expanduser())
    try:
        check_classifier(cfg.eval.fa_classifier, cfg.eval.fa_weights)
        check_reference(Path(cfg.eval.fid_reference).expanduser(), cfg.eval.fid_weights)
    except EvalError as err:
        raise UsageError(str(err)) from None


def prepare_diffusers(cfg: Config, progress: bool = True) -> Workload:
    """A DiT in diffusers layout (--model) with its ImageNet-style data folder (--data).

    Scored by the published evaluation: the timm classifier eval.fa_classifier and FID against
    eval.fid_reference."""
    check_inputs(cfg)
    pre = load_pretrained(cfg.model.path, variant=cfg.model.variant, **model_settings(cfg))
    root = Path(cfg.data.path).expanduser()
    classes = classes_of(cfg)
    files = scan(root, classes)
    try:
        classifier = load_timm_classifier(cfg.eval.fa_classifier, cfg.eval.fa_weights,
                                          cfg.eval.fa_num_classes)
        if classifier.num_classes != len(classes):
            raise UsageError(f"eval.fa_classifier {cfg.eval.fa_classifier} has "
                             f"{classifier.num_classes} classes (from {head_source(cfg)}) but the "
                             f"model {cfg.model.path} has {len(classes)}: give a classifier "
                             f"trained on the model's {len(classes)} classes, in its class order: "
                             "--set eval.fa_classifier=<timm name> --set eval.fa_weights=<its "
                             "weights file>")
        scorer = ImageNetScorer(classifier.to(processes().device), size=cfg.eval.fa_size,
                                reference=Path(cfg.eval.fid_reference).expanduser(),
                                extractor=cfg.eval.fid_extractor,
                                extractor_weights=cfg.eval.fid_weights,
                                cache_root=cache_root() / "fid",
                                name=cfg.eval.fa_classifier, classifier_weights=cfg.eval.fa_weights,
                                synsets=classes.synsets)
    except EvalError as err:
        raise UsageError(str(err)) from None
    transformer, vae = pre.transformer, pre.vae
    weights = sorted((str(f.relative_to(pre.root)), file_digest(f))
                     for f in pre.root.rglob("*") if f.is_file())
    # by content: a model re-saved at the same path gets a new id
    model_id = f"{cfg.model.path}#{fingerprint(weights)}"
    channels = 3 if vae is not None else transformer.config.in_channels

    def load(files: list[Path], what: str, progress: bool) -> tuple[torch.Tensor, list[int]]:
        """The files' images with their mirrors (as latents for a latent model), and those kept."""
        images, kept = load_images(files, pre.image_size, channels, what, progress)
        if vae is None:
            return with_flips(images), kept
        return encode(images, vae.to(processes().device), seed=cfg.seed, progress=progress,
                      what=what), kept

    def real_data(forget_class, cfg, progress=True):
        """The forget and retain sets of `forget_class`, loaded (or encoded) once and cached."""
        forget = forget_files(files, forget_class, cfg.data.forget_images, classes, root)
        retain = retain_files(files, forget_class, cfg.data.retain_images, cfg.seed)
        # Keyed by the model's weights, the seed, and every file used with its size and times:
        # changed files re-encode.
        key = {"model": model_id, "size": pre.image_size, "seed": cfg.seed}
        where = cache_root() / "latents" if cfg.data.latent_cache and vae is not None else None
        stamp = lambda paths: [file_stamp(p) for p in paths]  # noqa: E731
        forget_key = fingerprint({**key, "files": stamp(forget)})
        retain_key = fingerprint({**key, "files": stamp(p for _, p in retain)})

        def make(paths, labels, what):
            """The images of `paths` with their labels, each twice (the image, then its mirror)."""
            x, kept = load(paths, what, progress)
            y = torch.tensor([labels[i] for i in kept], dtype=torch.long)
            return {"x": x, "y": y.repeat(2)}  # the images, then their mirror images

        f = cached(where and where / f"{forget_key}.safetensors",
                   lambda: make(forget, [forget_class] * len(forget), "forget set"))
        r = cached(where and where / f"{retain_key}.safetensors",
                   lambda: make([p for _, p in retain], [c for c, _ in retain], "retain set"))
        return RealData(f["x"], f["y"], r["x"], r["y"], key=f"{forget_key}-{retain_key}")

    return Workload(model=transformer, model_id=model_id, classes=classes, scorer=scorer,
                    real_data=real_data, vae=vae, pretrained=pre)


def head_source(cfg: Config) -> str:
    """Where the classifier's number of classes comes from, for the error that refuses it."""
    if cfg.eval.fa_num_classes:
        return "eval.fa_num_classes"
    if cfg.eval.fa_weights:
        return f"the head of eval.fa_weights {cfg.eval.fa_weights}"
    return "its pretrained head"
