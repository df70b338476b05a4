"""A config from a preset and `--set` overrides, checked field by field; saved configs read back."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path

import yaml

from dualerase.config.schema import Config
from dualerase.errors import ConfigError, UsageError
from dualerase.fields import bounds, check_bounds, coerce, looks_numeric, suggest
from dualerase.storage import PRESETS, preset_names
from dualerase.unlearn.methods import METHODS


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
    """Set a config section's fields from a nested mapping, each value checked against its type.

    Raises:
        ConfigError: an unknown key (with the closest valid ones) or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'} must be a mapping of keys "
                          "to values")
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(_unknown(key, value, [f"{prefix}{n}" for n in names]))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, f"{key}.")
        else:
            setattr(obj, name, coerce(key, value, hints[name]))


def _unknown(key: str, value, here: list[str]) -> str:
    """The message for an unknown key (or section) `key`: the keys closest to the dotted key given
    (erace.outer_steps: erase.outer_steps), else those of its own level closest to it."""
    typed = key
    while isinstance(value, dict) and len(value) == 1:  # a --set item: one key down each level
        (name, value), = value.items()
        typed = f"{typed}.{name}"
    close = difflib.get_close_matches(typed, all_keys(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else suggest(key, here)
    return f"unknown config key {typed!r}{hint}"


def _validate(cfg: Config) -> None:
    """The rules each field's type carries (bounds), finite numbers, and the rules across fields."""
    for key in all_keys(cfg):
        section, _, name = key.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        value = getattr(owner, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        check_bounds(key, value,
                     bounds(typing.get_type_hints(type(owner), include_extras=True)[name]))
    robust_cfg = cfg.robustness
    if any(not math.isfinite(g) or g < 0 for g in robust_cfg.guidances):
        raise ConfigError(f"robustness.guidances must be finite scales >= 0, got "
                          f"{robust_cfg.guidances}")
    if (any(k < 1 for k in robust_cfg.relearn_images)
            or any(not 0 <= s <= robust_cfg.relearn_steps for s in robust_cfg.relearn_at)):
        raise ConfigError("robustness.relearn_images must be >= 1 and robustness.relearn_at within "
                          f"0..relearn_steps ({robust_cfg.relearn_steps}), got "
                          f"{robust_cfg.relearn_images} and {robust_cfg.relearn_at}")
    if cfg.model.tie_embedders not in ("auto", True, False):
        raise ConfigError("model.tie_embedders must be auto, true or false, got "
                          f"{cfg.model.tie_embedders!r}")
    if cfg.model.timestep_shift not in (None, 0, 1):
        raise ConfigError("model.timestep_shift must be null, 0 (original DiT) or 1 (diffusers), "
                          f"got {cfg.model.timestep_shift!r}")
    if 8 % cfg.digits.patch_size:
        raise ConfigError("digits.patch_size must divide the 8-pixel image size, got "
                          f"{cfg.digits.patch_size}")
    if cfg.eval.fa_real_distance is not None and cfg.model.source != "digits":
        raise ConfigError("eval.fa_real_distance needs the digits' real images: set it to null for "
                          "a diffusers model")


def _read_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        if name_or_path not in preset_names():
            raise ConfigError(f"unknown preset {name_or_path!r}"
                              f"{suggest(name_or_path, preset_names())}; "
                              "or give the path of a YAML file")
        path = PRESETS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found: give a preset name or an existing "
                          "YAML path")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML "
                          f"({str(e).splitlines()[0]})") from None


def parse_set(item: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}, the value read as YAML (so 3, 1e-4, null, true work).

    Raises:
        ConfigError: an item that is not key=value.
    """
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

    In order: the schema defaults, the chosen method's own published values (`Method.published`),
    the preset, its `per_method` section for that method, then the overrides in order.

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
    for key, value in (METHODS[chosen.method.name].published.items()
                       if chosen.method.name in METHODS else ()):
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


def model_overrides(path: str | Path | None) -> list[str]:
    """`--set` items that run a diffusers model from a hub id or folder (`--model`); [] for None."""
    return [] if path is None else ["model.source=diffusers", f"model.path={path}"]


def command_config(config: str | None, model: str | None, data: str | None,
                   overrides: list[str]) -> Config:
    """erase-class's config: --config (default: digits; imagenet, whose model is DiT-XL/2, with
    --model or --data), then --model, --data and the --set items."""
    data_sets = [f"data.path={data}"] if data else []
    return load_config(config or ("imagenet" if model or data else "digits"),
                       model_overrides(model) + data_sets + overrides)


def forget_class_of(given: str | None, config: str | None) -> str:
    """The class to erase: `given`, else the one a finished run's saved config was run with.

    --config <run>/config.yaml or <run>/model/dualerase-config.yaml: the class is read from the
    run's metrics.json.

    Raises:
        UsageError: no class given, and none recorded.
    """
    if given is not None:
        return given
    path = Path(config).expanduser() if config else None
    if path is not None and path.is_file():
        run = path.parent.parent if path.parent.name == "model" else path.parent
        try:
            recorded = json.loads((run / "metrics.json").read_text()).get("forget_class")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded is not None:
            return str(recorded)
        raise UsageError(f"give the class to erase: {config} records none (only a finished run "
                         "does, in its metrics.json), e.g. `erase-class 3 --config "
                         f"{config}`")
    raise UsageError("give the class to erase, e.g. `erase-class 3`: an index, an ImageNet "
                     "synset or a name")


def to_dict(cfg: Config) -> dict:
    """`cfg` as a nested dict of its sections (`dataclasses.asdict`)."""
    return dataclasses.asdict(cfg)


def differing(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) of every value that differs in two to_dict configs."""
    out = []
    for k in a:
        if isinstance(a[k], dict) and isinstance(b.get(k), dict):
            out += differing(a[k], b[k], f"{prefix}{k}.")
        elif a[k] != b.get(k):
            out.append((f"{prefix}{k}", a[k], b.get(k)))
    return out


def saved_config(path: Path) -> dict | None:
    """A run's config.yaml as this version reads it; None when it holds a key no longer known.

    Keys added since it was written take their defaults. It is compared with to_dict of the config
    a resume is given."""
    cfg = Config()
    try:
        apply_mapping(cfg, yaml.safe_load(path.read_text()) or {})
    except ConfigError:
        return None
    return to_dict(cfg)
