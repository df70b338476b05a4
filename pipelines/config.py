"""The one config schema: every option with its one default, presets that override a few, and `--set` overrides."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from configs import PRESETS_DIR, preset_names
from erase.dualoptim import OPTIMIZERS, EraseConfig
from erase.methods import METHODS, MethodConfig
from eval.classifier import ClassifierRecipe
from pipelines.digits import DigitsRecipe
from pipelines.errors import ConfigError, UsageError


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError (one line, exit 2 from the command) instead of printing usage."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


@dataclass
class ModelConfig:
    source: str = "digits"  # "digits": the embedded tiny DiT (section `digits`); "diffusers": `path` (--model)
    path: str = "facebook/DiT-XL-2-256"  # a hub id (read through the Hugging Face cache) or a local pipeline folder
    # Run the model as it was trained (pipelines.pretrained.match_training). A checkpoint converted from the original
    # DiT has equal timestep/class embedder copies in every block; one trained in diffusers layout has distinct ones.
    # null / auto: the original's settings when the copies are equal at load, else diffusers', unless the model folder
    # records values written by us (dualerase.json).
    tie_embedders: bool | str = "auto"  # one embedder shared by all blocks (the original's); auto: iff copies equal
    timestep_shift: int | None = None  # frequencies exp(-ln(1e4) i / (128 - shift)): 0 original, 1 diffusers
    norm_eps: float | None = None  # eps of diffusers' config-driven LayerNorm: 1e-6 original, else the config's


@dataclass
class DataConfig:
    """The real images of a diffusers model (--data): an ImageNet-style train folder, one sub-folder per class."""

    path: str | None = None
    forget_images: int = 0  # images of the forget class used (its first N; 0: all)
    retain_images: int = 5000  # retain subset drawn at random from the other classes (0: all)
    latent_cache: bool = True  # encode both sets through the VAE once; later runs read the cached latents


@dataclass
class ComputeConfig:
    """How the work runs; processes come from the launcher (accelerate launch / torchrun), one per device."""

    mixed_precision: str = "no"  # "no" or "bf16" (autocast; weights and optimizer states stay float32)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower steps


@dataclass
class SampleConfig:
    """The sampler of every evaluation and grid."""

    scheduler: str = "ddpm"  # diffusers DDPMScheduler with the learned variance (DiT's sampler)
    steps: int = 250  # DiT's default
    guidance: float = 1.5  # classifier-free guidance scale (1: no guidance)
    guidance_channels: int | None = None  # guide only the first k epsilon channels (DiT's sampler: 3); null: all
    timestep_spacing: str = "linspace"  # linspace: DiT's respacing (from t = 999); diffusers' leading, or trailing
    batch_size: int = 500


@dataclass
class EvalConfig:
    forget_samples: int = 200  # samples of the forget class, for forget accuracy
    retain_samples_per_class: int = 100  # samples of each other class, for retain accuracy and FID
    retain_samples: int | None = None  # instead: this many samples, labels drawn at random from the other classes
    grid_per_class: int = 8  # images per class row of grid.png
    grid_classes: int = 10  # classes shown in grid.png (the forget class first, then the lowest others)
    save_samples: bool = True  # write the after-erasure samples as PNG folders and ADM-style .npz (samples/)
    # Diffusers models (the digits default uses its own classifier and feature extractor):
    fa_classifier: str = "resnet34.tv_in1k"  # timm ImageNet classifier of forget accuracy
    fa_weights: str | None = None  # its weights file (null: the Hugging Face cache)
    fa_size: int = 224  # samples are resized to this before classification
    fa_num_classes: int | None = None  # the classifier's class count (null: read from fa_weights, else ImageNet's 1000)
    fid_reference: str | None = None  # folder of real retained-class images, built by `fid-reference`
    fid_extractor: str = "inception-v3-compat"  # torch-fidelity feature extractor
    fid_weights: str | None = None  # its weights file (null: torch-fidelity downloads them once)


@dataclass
class Config:
    seed: int = 0  # erasure batches, Fisher samples and evaluation noise all follow it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    digits: DigitsRecipe = field(default_factory=DigitsRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    method: MethodConfig = field(default_factory=MethodConfig)
    erase: EraseConfig = field(default_factory=EraseConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES = {
    "erase.optimizer": ("dual", "shared"),
    "erase.alpha_schedule": ("cosine", "constant"),
    "erase.forget_optimizer": tuple(OPTIMIZERS),
    "erase.retain_optimizer": tuple(OPTIMIZERS),
    "method.name": tuple(METHODS),
    "model.source": ("digits", "diffusers"),
    "compute.mixed_precision": ("no", "bf16"),
    "sample.scheduler": ("ddpm",),
    "method.forget_reduction": (None, "mean", "sum"),
    "method.retain_reduction": (None, "mean", "sum"),
    "sample.timestep_spacing": ("linspace", "leading", "trailing"),
}
POSITIVE = {"erase.outer_steps", "erase.batch_size", "erase.forget_lr", "erase.retain_lr", "erase.shared_lr",
            "method.grad_samples", "method.replay_per_class", "sample.steps", "sample.batch_size", "eval.forget_samples",
            "eval.retain_samples_per_class", "eval.grid_per_class", "digits.steps", "digits.batch_size", "digits.lr",
            "digits.layers", "digits.heads", "digits.head_dim", "digits.patch_size", "classifier.epochs",
            "classifier.batch_size", "classifier.lr", "erase.forget_clip", "erase.retain_clip",
            "eval.grid_classes", "eval.fa_size", "eval.retain_samples", "eval.fa_num_classes", "method.saliency_batch",
            "method.saliency_guidance", "method.fisher_timesteps", "method.fisher_chunk", "sample.guidance_channels",
            "model.norm_eps"}
NON_NEGATIVE = {"seed", "data.forget_images", "data.retain_images", "erase.checkpoint_every", "erase.forget_steps", "erase.retain_steps", "erase.alpha", "method.gamma", "sample.guidance",
                "method.replay_weight", "method.ewc_lambda",
                "erase.forget_weight_decay", "erase.retain_weight_decay", "digits.ema_decay", "classifier.noise_augment"}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else f" (valid: {', '.join(sorted(options))})"


def all_keys(obj=None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(key: str, value, hint):
    """Check `value` against the field's type; ints are accepted for floats."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    kinds = [a for a in args if a is not type(None)] or [hint]
    for kind in kinds:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in args or [hint])
    raise ConfigError(f"{key} must be {names}, got {value!r}: fix the value in the preset or --set")


def _apply(obj, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'} must be a mapping of keys to values")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, all_keys())}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, hints[name]))


def _validate(cfg: Config) -> None:
    for key in all_keys(cfg):
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section), name) if section else getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key} = {value!r} is not valid{_suggest(str(value), [str(c) for c in CHOICES[key]])}")
        if key in POSITIVE and value is not None and not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value!r}")
        if key in NON_NEGATIVE and not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value!r}")
    if cfg.model.tie_embedders not in ("auto", True, False):
        raise ConfigError(f"model.tie_embedders must be auto, true or false, got {cfg.model.tie_embedders!r}")
    if cfg.model.timestep_shift not in (None, 0, 1):
        raise ConfigError(f"model.timestep_shift must be null, 0 (original DiT) or 1 (diffusers), got "
                          f"{cfg.model.timestep_shift!r}")
    if 8 % cfg.digits.patch_size:
        raise ConfigError(f"digits.patch_size must divide the 8-pixel image size, got {cfg.digits.patch_size}")
    if not 0 < cfg.method.top_p <= 1:
        raise ConfigError(f"method.top_p must be in (0, 1], got {cfg.method.top_p!r}")
    for key in ("forget_label_dropout", "retain_label_dropout"):
        if not 0 <= getattr(cfg.erase, key) < 1:
            raise ConfigError(f"erase.{key} must be in [0, 1), got {getattr(cfg.erase, key)!r}")


def _read_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        if name_or_path not in preset_names():
            raise ConfigError(f"unknown preset {name_or_path!r}{_suggest(name_or_path, preset_names())}; "
                              "or give the path of a YAML file")
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found: give a preset name or an existing YAML path")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None


def parse_set(item: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}, the value read as YAML (so 3, 1e-4, null, true work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} must look like key=value, e.g. erase.outer_steps=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _looks_numeric(text: str) -> bool:
    """YAML 1.1 reads '1e-4' as a string; accept it as the number a user means."""
    try:
        float(text)
        return text.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")
    except ValueError:
        return False


def load_config(name_or_path: str = "digits", overrides: list[str] = ()) -> Config:
    """The schema defaults, updated by the chosen method's own published values (`Method.published`), then by a
    preset (name or YAML path), then by the preset's `per_method` section for that method, then by `key=value`
    overrides in order."""
    data = _read_preset(name_or_path)
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path!r} must be a YAML mapping of sections")
    per_method = data.pop("per_method", None) or {}
    for name in per_method:
        if name not in METHODS:
            raise ConfigError(f"per_method names unknown method {name!r}{_suggest(name, METHODS)}")
    parsed = [parse_set(item) for item in overrides]
    chosen = Config()  # which method the preset and the command line choose
    for item in [data, *parsed]:
        _apply(chosen, item)
    cfg = Config()
    for key, value in METHODS[chosen.method.name].published.items() if chosen.method.name in METHODS else ():
        _apply(cfg, parse_set(f"{key}={value}"))
    _apply(cfg, data)
    for item in parsed:
        _apply(cfg, item)
    if cfg.method.name in per_method:
        _apply(cfg, per_method[cfg.method.name])
        for item in parsed:  # the command line still wins
            _apply(cfg, item)
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
