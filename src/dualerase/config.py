"""The one config schema: every option with its one default, presets that override a few, and `--set` overrides."""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from annotated_types import Ge, Gt, Le

from dualerase.errors import ConfigError
from dualerase.fields import bounds, check_bounds, coerce, looks_numeric, suggest
from dualerase.metrics.classifier import ClassifierRecipe
from dualerase.models.digits import DigitsRecipe
from dualerase.storage import PRESETS, preset_names  # noqa: F401 (preset_names: part of this module's API)
from dualerase.unlearn.dualoptim import EraseConfig
from dualerase.unlearn.methods import METHODS, MethodConfig


@dataclass
class ModelConfig:
    # "digits": the embedded tiny DiT (section `digits`); "diffusers": `path` (--model)
    source: Literal["digits", "diffusers"] = "digits"
    path: str = "facebook/DiT-XL-2-256"  # a hub id (read through the Hugging Face cache) or a local pipeline folder
    variant: str | None = None  # weights saved as a variant (fp16: diffusion_pytorch_model.fp16.safetensors)
    # Run the model as it was trained (dualerase.models.pretrained.match_training): a checkpoint converted from the
    # original DiT has equal embedder copies in every block, one trained in diffusers layout distinct ones.
    # tie_embedders: one embedder shared by all blocks (the original's); null / auto: the original's settings iff the
    # copies are equal at load (within 1e-4), unless the model folder records values written by us (dualerase.json)
    tie_embedders: bool | str = "auto"
    timestep_shift: int | None = None  # frequencies exp(-ln(1e4) i / (128 - shift)): 0 original, 1 diffusers
    # eps of diffusers' config-driven LayerNorm: 1e-6 original, else the config's
    norm_eps: Annotated[float | None, Gt(0)] = None


@dataclass
class DataConfig:
    """The real images of a diffusers model (--data): an ImageNet-style train folder, one sub-folder per class."""

    path: str | None = None
    forget_images: Annotated[int, Ge(0)] = 0  # images of the forget class used (its first N; 0: all)
    retain_images: Annotated[int, Ge(0)] = 5000  # retain subset drawn at random from the other classes (0: all)
    latent_cache: bool = True  # encode both sets through the VAE once; later runs read the cached latents


@dataclass
class ComputeConfig:
    """How the work runs; processes come from the launcher (accelerate launch / torchrun), one per device."""

    mixed_precision: Literal["no", "bf16"] = "no"  # bf16: autocast; weights and optimizer states stay float32
    # torch's intra-op CPU threads per process (null: torch's default, one per core). On a machine busy with other
    # work, 1 avoids threads waiting on each other (README, "Threads"); results may differ by float rounding
    threads: Annotated[int | None, Gt(0)] = None
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower steps
    # float32 matmuls and convolutions in TF32 on CUDA (Ampere and later), as the published DiT code sets; false: full
    # float32. No effect on CPU or on bf16 autocast's bf16 matmuls
    tf32: bool = True
    # torch.compile the DiT in place (names and checkpoints unchanged) for sampling and erasure: compiles once per
    # batch shape (about a minute on CPU), then runs faster; numbers differ from eager only by float rounding
    compile: bool = False


@dataclass
class SampleConfig:
    """The sampler of every evaluation and grid."""

    # ddpm: diffusers DDPMScheduler with the learned variance (DiT's sampler); ddim (eta 0) or dpm-solver++ (2nd-order
    # multistep): fewer steps, fixed variance; they read the forget accuracy of partly erased models lower than DDPM
    scheduler: Literal["ddpm", "ddim", "dpm-solver++"] = "ddpm"
    steps: Annotated[int, Gt(0)] = 250  # DiT's default
    guidance: Annotated[float, Ge(0)] = 1.5  # classifier-free guidance scale (1: no guidance)
    # guide only the first k epsilon channels (DiT's sampler: 3); null: all
    guidance_channels: Annotated[int | None, Gt(0)] = None
    # dit: DiT's space_timesteps (from t = 999); diffusers' linspace (the same but for one step at some odd counts),
    # leading or trailing
    timestep_spacing: Literal["dit", "linspace", "leading", "trailing"] = "dit"
    batch_size: Annotated[int, Gt(0)] = 500


@dataclass
class EvalConfig:
    # full: the sampler and sample counts as configured (published comparisons need it); fast: for quick looks while
    # tuning, at most 50 sampler steps and a quarter of the samples (dualerase.runs.evaluation.evaluation_config)
    protocol: Literal["full", "fast"] = "full"
    forget_samples: Annotated[int, Gt(0)] = 200  # samples of the forget class, for forget accuracy
    retain_samples_per_class: Annotated[int, Gt(0)] = 100  # samples of each other class, for retain accuracy and FID
    # instead: this many samples, labels drawn at random from the other classes
    retain_samples: Annotated[int | None, Ge(2)] = None  # at least 2: FID needs a covariance
    # FA counts a sample if the classifier's top class is the forget class at least this sure and it lies within this
    # L2 distance of a real image of that class; null: top class alone, as published (metrics.scorer.counts_as_forget)
    fa_min_confidence: Annotated[float | None, Ge(0), Le(1)] = None
    fa_real_distance: Annotated[float | None, Gt(0)] = None
    grid_per_class: Annotated[int, Gt(0)] = 8  # images per class row of grid.png
    # classes shown in grid.png (the forget class first, then the lowest others)
    grid_classes: Annotated[int, Gt(0)] = 10
    save_samples: bool = True  # write the after-erasure samples as PNG folders and ADM-style .npz (samples/)
    # Diffusers models (the digits default uses its own classifier and feature extractor):
    fa_classifier: str = "resnet34.tv_in1k"  # timm ImageNet classifier of forget accuracy
    fa_weights: str | None = None  # its weights file (null: the Hugging Face cache)
    fa_size: Annotated[int, Gt(0)] = 224  # samples are resized to this before classification
    # the classifier's class count (null: read from fa_weights, else ImageNet's 1000)
    fa_num_classes: Annotated[int | None, Gt(0)] = None
    fid_reference: str | None = None  # folder of real retained-class images, built by `fid-reference`
    fid_extractor: str = "inception-v3-compat"  # torch-fidelity feature extractor
    fid_weights: str | None = None  # its weights file (null: torch-fidelity downloads them once)


@dataclass
class RobustnessConfig:
    """Is the class really gone? Measurements beyond the protocol's forget accuracy, made before and after erasure on
    the evaluation's sampler and noise (each off by default; runs/robustness.py)."""

    samples: Annotated[int, Gt(0)] = 100  # forget-class (and null-class) samples per measurement below
    # forget accuracy at each of these guidance scales (1.0: none; DiTPipeline's default is 4.0)
    guidances: list[float] = field(default_factory=list)
    unconditional: bool = False  # the share of null-class (unconditional) samples that the classifier calls the class
    # retain accuracy and FID of the k classes the evaluation's classifier confuses most with the forget class
    neighbours: Annotated[int, Ge(0)] = 0
    # the relearning attack: fine-tune a copy of the model on k real images of the forget class, for each k here,
    # with DiT's loss and AdamW; forget accuracy by the probe (erase.probe_samples at erase.probe_steps) at relearn_at
    relearn_images: list[int] = field(default_factory=list)
    relearn_steps: Annotated[int, Gt(0)] = 100
    relearn_at: list[int] = field(default_factory=lambda: [0, 10, 25, 50, 100])
    relearn_lr: Annotated[float, Gt(0)] = 1e-4
    relearn_batch: Annotated[int, Gt(0)] = 8  # images per step, drawn from the k
    # the conditioning attack: with the model frozen, a new embedding of the forget class (a row per class embedder,
    # from the class's own row or the null class's) optimised with Adam so that the model denoises real images of the
    # class, then forget accuracy by the probe with it; 0 steps: off
    attack_steps: Annotated[int, Ge(0)] = 0
    attack_start: Literal["class", "null"] = "class"
    attack_lr: Annotated[float, Gt(0)] = 1e-2
    attack_images: Annotated[int, Gt(0)] = 64  # real forget-class images it is fitted to


@dataclass
class Config:
    seed: Annotated[int, Ge(0)] = 0  # erasure batches, Fisher samples and evaluation noise all follow it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    digits: DigitsRecipe = field(default_factory=DigitsRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    method: MethodConfig = field(default_factory=MethodConfig)
    erase: EraseConfig = field(default_factory=EraseConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


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


def apply_mapping(obj, data: dict, prefix: str = "") -> None:
    """Set the fields of a config section from a nested mapping, each value checked against its type.

    Raises:
        ConfigError: an unknown key (with the closest valid ones) or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'} must be a mapping of keys to values")
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, all_keys())}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, f"{key}.")
        else:
            setattr(obj, name, coerce(key, value, hints[name]))


def _validate(cfg: Config) -> None:
    """The rules each field's type carries (bounds), finite numbers, and the few rules that tie fields together."""
    for key in all_keys(cfg):
        section, _, name = key.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        value = getattr(owner, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        check_bounds(key, value, bounds(typing.get_type_hints(type(owner), include_extras=True)[name]))
    r = cfg.robustness
    if any(not math.isfinite(g) or g < 0 for g in r.guidances):
        raise ConfigError(f"robustness.guidances must be finite scales >= 0, got {r.guidances}")
    if any(k < 1 for k in r.relearn_images) or any(not 0 <= s <= r.relearn_steps for s in r.relearn_at):
        raise ConfigError(f"robustness.relearn_images must be >= 1 and robustness.relearn_at within 0..relearn_steps "
                          f"({r.relearn_steps}), got {r.relearn_images} and {r.relearn_at}")
    if cfg.model.tie_embedders not in ("auto", True, False):
        raise ConfigError(f"model.tie_embedders must be auto, true or false, got {cfg.model.tie_embedders!r}")
    if cfg.model.timestep_shift not in (None, 0, 1):
        raise ConfigError(f"model.timestep_shift must be null, 0 (original DiT) or 1 (diffusers), got "
                          f"{cfg.model.timestep_shift!r}")
    if 8 % cfg.digits.patch_size:
        raise ConfigError(f"digits.patch_size must divide the 8-pixel image size, got {cfg.digits.patch_size}")
    if cfg.eval.fa_real_distance is not None and cfg.model.source != "digits":
        raise ConfigError("eval.fa_real_distance needs the digits' real images: set it to null for a diffusers model")


def _read_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        if name_or_path not in preset_names():
            raise ConfigError(f"unknown preset {name_or_path!r}{suggest(name_or_path, preset_names())}; "
                              "or give the path of a YAML file")
        path = PRESETS / f"{name_or_path}.yaml"
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
    if isinstance(value, str) and looks_numeric(value):
        value = float(value)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(preset: str | Path | Config | dict = "digits", overrides: list[str] = ()) -> Config:
    """A config: the schema defaults under a preset and `key=value` overrides.

    In order: the schema defaults, the chosen method's own published values (`Method.published`), the
    preset, its `per_method` section for that method, then the overrides in order.

    Args:
        preset: a preset name, a YAML path, or a config in memory (a `Config`, or a nested dict of
            sections as a preset file holds it).
        overrides: `--set` items, `key=value` with the value read as YAML.

    Raises:
        ConfigError: an unknown preset, key or method, or a value its field does not allow.
    """
    if isinstance(preset, Config):
        data = to_dict(preset)
    elif isinstance(preset, dict):
        data = copy.deepcopy(preset)
    else:
        data = _read_preset(str(preset))
    name_or_path = preset if isinstance(preset, (str, Path)) else "given in memory"
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path!r} must be a YAML mapping of sections")
    per_method = data.pop("per_method", None) or {}
    for name in per_method:
        if name not in METHODS:
            raise ConfigError(f"per_method names unknown method {name!r}{suggest(name, METHODS)}")
    parsed = [parse_set(item) for item in overrides]
    chosen = Config()  # which method the preset and the command line choose
    for item in [data, *parsed]:
        apply_mapping(chosen, item)
    cfg = Config()
    for key, value in METHODS[chosen.method.name].published.items() if chosen.method.name in METHODS else ():
        apply_mapping(cfg, parse_set(f"{key}={value}"))
    apply_mapping(cfg, data)
    for item in parsed:
        apply_mapping(cfg, item)
    if cfg.method.name in per_method:
        apply_mapping(cfg, per_method[cfg.method.name])
        for item in parsed:  # the command line still wins
            apply_mapping(cfg, item)
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def differing(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every value that differs between two to_dict configs."""
    out = []
    for k in a:
        if isinstance(a[k], dict) and isinstance(b.get(k), dict):
            out += differing(a[k], b[k], f"{prefix}{k}.")
        elif a[k] != b.get(k):
            out.append((f"{prefix}{k}", a[k], b.get(k)))
    return out


def saved_config(path: Path) -> dict | None:
    """A run's config.yaml as this version reads it (keys added since it was written take their defaults), to compare
    with to_dict of the config a resume is given; None when it holds a key this version no longer has."""
    cfg = Config()
    try:
        apply_mapping(cfg, yaml.safe_load(path.read_text()) or {})
    except ConfigError:
        return None
    return to_dict(cfg)
