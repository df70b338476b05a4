"""A benchmark spec: the typed schema of `presets/bench/*.yaml`.

A spec is read by the same field checks as `Config`."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from annotated_types import Ge, Le

from dualerase.errors import ConfigError, UsageError
from dualerase.fields import bounds, check_bounds, coerce, suggest
from dualerase.storage import PRESETS, preset_names


@dataclass
class TuneSpec:
    """A tuning stage: each method's grid of settings on tuning seeds, one operating point per pair.

    `grid` maps a method to {config key: [values]}, or to one such mapping per optimizer mode
    ({dual: {...}, shared: {...}}); every combination is a setting. `seeds` must never be reporting
    seeds; `classes` defaults to the spec's; `set` holds extra overrides (e.g. the fast protocol).
    The rule (`tuning.select`): the lowest FID among the settings with FA <= `fa_target` and retain
    accuracy within `retain_drop` of the base model's, else the lowest FA.
    """

    seeds: list[int] = field(default_factory=lambda: [100, 101])
    classes: list[int | str] | None = None
    set: list[str] = field(default_factory=list)
    grid: dict = field(default_factory=dict)
    fa_target: Annotated[float, Ge(0), Le(1)] = 0.05
    retain_drop: Annotated[float, Ge(0)] = 0.03


@dataclass
class SweepSpec:
    """A sensitivity sweep: one config key (or one per optimizer mode) over `values`.

    Every cell runs at each value."""

    # {dual: erase.forget_lr, shared: erase.shared_lr}: one per mode
    key: str | dict = "erase.forget_lr"
    values: list[float] = field(default_factory=list)


@dataclass
class BenchSpec:
    """A benchmark's (method, optimizer, class, seed) cells, under one preset and its overrides.

    `set` are the spec's overrides, `overrides` the command line's (applied after them); `tune` and
    `sweep` are optional stages (`TuneSpec`, `SweepSpec`).
    """

    config: str = "digits"
    methods: list[str] = field(default_factory=lambda: ["sfron"])
    optimizers: list[Literal["dual", "shared"]] = field(default_factory=lambda: ["dual", "shared"])
    classes: list[int | str] = field(default_factory=lambda: ["3"])
    seeds: list[Annotated[int, Ge(0)]] = field(default_factory=lambda: [0])
    set: list[str] = field(default_factory=list)
    tune: TuneSpec | None = None
    sweep: SweepSpec | None = None
    overrides: list[str] = field(default_factory=list)  # the command line's --set, not the file's

    def grid_of(self, method: str, optimizer: str) -> dict:
        """One method's tuning grid in one optimizer mode: {config key: [values]}, {} for none."""
        keys = self.tune.grid.get(method) or {}
        if isinstance(keys, dict) and set(keys) & {"dual", "shared"}:
            return keys.get(optimizer) or {}
        return keys

    def sweep_key(self, optimizer: str) -> str:
        """The swept key in one optimizer mode (dual mode's forget lr, shared mode's shared lr)."""
        key = self.sweep.key
        return key[optimizer] if isinstance(key, dict) else key


FILE_KEYS = [f.name for f in dataclasses.fields(BenchSpec) if f.name != "overrides"]


def _fill(obj, data, where: str, prefix: str = ""):
    """Set the dataclass `obj`'s fields from the mapping `data`, each checked against its type."""
    if not isinstance(data, dict):
        raise UsageError(f"{prefix.rstrip('.') or 'the spec'} in {where} must be a mapping")
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names or key == "overrides":
            valid = FILE_KEYS if not prefix else names
            raise UsageError(f"unknown key {key!r} in {where}{suggest(name, valid)}")
        hint = hints[name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = typing.get_args(hint) if union else (hint,)
        nested = next((k for k in kinds if isinstance(k, type) and dataclasses.is_dataclass(k)),
                      None)
        if nested is not None and value is not None:
            value = _fill(nested(), value, where, f"{key}.")
        elif dict in kinds:  # a grid, or a key per optimizer mode: their shapes are checked below
            if not isinstance(value, (dict, *(k for k in kinds if k is not dict))):
                raise UsageError(f"{key} in {where} must be a mapping, got {value!r}")
        else:
            try:
                value = coerce(key, value, hint)
                if typing.get_origin(hint) is list:  # each item within its type's bounds
                    for v in value:
                        check_bounds(key, v, bounds(typing.get_args(hint)[0]))
                else:
                    check_bounds(key, value, bounds(hint))
            except ConfigError as e:  # the field's own words, pointed at the spec file
                why = str(e).removesuffix(": fix the value in the preset or --set")
                raise UsageError(f"{why} (in {where})") from None
        setattr(obj, name, value)
    return obj


def _check(spec: BenchSpec, where: str) -> BenchSpec:
    """The rules that tie a spec's fields together: tuning seeds apart, grid and sweep shapes."""
    spec.classes = [str(c) for c in spec.classes]
    tune, sweep = spec.tune, spec.sweep
    if tune is not None:
        tune.classes = None if tune.classes is None else [str(c) for c in tune.classes]
        overlap = set(tune.seeds) & set(spec.seeds)
        if overlap:
            raise UsageError(f"tune.seeds and seeds in {where} share {sorted(overlap)}: tuning "
                             "seeds must never be reporting seeds")
        for method in tune.grid:
            for optimizer in spec.optimizers:
                keys = spec.grid_of(method, optimizer)
                if not isinstance(keys, dict) or not all(isinstance(v, list) and v
                                                         for v in keys.values()):
                    raise UsageError(f"tune.grid.{method} in {where} must map config keys to lists "
                                     "of values, or dual and shared to such mappings")
    if sweep is not None:
        if isinstance(sweep.key, dict) and not set(spec.optimizers) <= set(sweep.key):
            raise UsageError(f"sweep.key in {where} must be a config key, or one per optimizer "
                             "mode: {dual: ..., shared: ...}")
        if not sweep.values or not all(math.isfinite(v) for v in sweep.values):
            raise UsageError(f"sweep.values in {where} must be a list of finite numbers")
    return spec


def read_spec(name_or_path: str) -> BenchSpec:
    """A benchmark spec from a shipped spec's name or a YAML path.

    Missing keys take BenchSpec's defaults.

    Raises:
        UsageError: an unknown spec, invalid YAML, an unknown key or a value of the wrong type.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESETS / "bench" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UsageError(f"unknown benchmark spec {name_or_path!r}: give one of "
                         f"{', '.join(preset_names('bench'))} or a YAML path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"benchmark spec {path} is not valid YAML "
                         f"({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"benchmark spec {path} must be a mapping with keys "
                         f"{', '.join(FILE_KEYS)}")
    return _check(_fill(BenchSpec(), data, str(path)), str(path))
