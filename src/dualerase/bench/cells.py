"""A benchmark's cells: one erase-class run each, named, with its folder and its config."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dualerase.bench.spec import BenchSpec, read_spec
from dualerase.config import Config, load_config, saved_config, to_dict
from dualerase.data.classes import Classes, resolve_class
from dualerase.errors import UsageError
from dualerase.runs.workload import classes_of


class Cell(NamedTuple):
    """One (method, optimizer, class, seed) run of a benchmark at its setting (its overrides)."""

    method: str
    optimizer: str
    cls: str
    seed: int
    setting: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How progress lines and tables name the cell."""
        name = f"{self.method} / {self.optimizer} / class {self.cls} / seed {self.seed}"
        return name + (f" / {setting_label(self.setting)}" if self.setting else "")

    def folder(self, output: Path) -> Path:
        """The cell's run folder under a benchmark's output folder."""
        pairs = (item.split("=", 1) for item in self.setting)
        tag = "".join(f"-{key.split('.')[-1]}{value}" for key, value in pairs).replace(" ", "")
        cls = self.cls.replace(" ", "_")
        return output / "cells" / f"{self.method}-{self.optimizer}-{cls}-s{self.seed}{tag}"


def setting_label(setting) -> str:
    """A cell's setting (its overrides from a tuning grid or a sweep) as the tables show it."""
    return " ".join(setting)


def cell_folder(output: Path, *cell) -> Path:
    """The folder of the cell given by its fields (method, optimizer, class, seed[, setting])."""
    return Cell(*cell).folder(output)


@dataclass
class Grid:
    """A spec with the command line's choices applied: its cells, each one's config, the classes."""

    spec: BenchSpec
    cells: list[Cell]
    configs: list[Config]
    classes: Classes


def configs_of(spec: BenchSpec, cells: list[Cell], extra: list[str] = ()) -> list[Config]:
    """Every cell's config, checked before any cell runs.

    In order: the spec's preset and overrides, the command line's, `extra` (a tuning stage's), the
    cell's setting, then its method, optimizer and seed.
    """
    return [load_config(spec.config, [*spec.set, *spec.overrides, *extra, *cell.setting,
                                      f"method.name={cell.method}",
                                      f"erase.optimizer={cell.optimizer}", f"seed={cell.seed}"])
            for cell in cells]


def _cells(spec: BenchSpec, settings, classes, seeds) -> list[Cell]:
    """Every (method, optimizer, setting, class, seed), in that order of nesting."""
    return [Cell(method, optimizer, str(cls), seed, tuple(setting))
            for method, optimizer in itertools.product(spec.methods, spec.optimizers)
            for setting in settings(method, optimizer) for cls in classes for seed in seeds]


def plan(spec: str = "digits", *, classes: list | None = None, methods: list[str] | None = None,
         optimizers: list[str] | None = None, seeds: list[int] | None = None,
         overrides: list[str] = ()) -> Grid:
    """Read the spec, apply the command line's choices, and check every cell's config and class.

    Raises:
        UsageError, ConfigError: a bad spec, choice, class or override, before any cell runs.
    """
    bench_spec = read_spec(spec)
    for name, value in (("classes", classes), ("methods", methods), ("optimizers", optimizers),
                        ("seeds", seeds)):
        if value:
            setattr(bench_spec, name, [str(v) for v in value] if name == "classes" else list(value))
    bench_spec.overrides = list(overrides)

    def settings(method: str, optimizer: str) -> list[list[str]]:
        if bench_spec.sweep is None:
            return [[]]
        return [[f"{bench_spec.sweep_key(optimizer)}={v}"] for v in bench_spec.sweep.values]

    cells = _cells(bench_spec, settings, bench_spec.classes, bench_spec.seeds)
    configs = configs_of(bench_spec, cells)
    grid = Grid(bench_spec, cells, configs, classes_of(configs[0]))  # the command line's model
    for cls in bench_spec.classes:
        resolve_class(cls, grid.classes)
    return grid


def tuning_grid(grid: Grid) -> Grid:
    """The tuning stage of a spec with `tune`: each method's settings on the tuning seeds."""
    spec, tune = grid.spec, grid.spec.tune

    # every combination, or the preset
    def settings(method: str, optimizer: str) -> list[list[str]]:
        keys = spec.grid_of(method, optimizer)
        return [[f"{k}={v}" for k, v in zip(keys, values)]
                for values in itertools.product(*keys.values())] or [[]]

    cells = _cells(spec, settings, tune.classes or spec.classes, tune.seeds)
    return Grid(spec, cells, configs_of(spec, cells, tune.set), grid.classes)


def check_cells(grid: Grid, output: Path) -> None:
    """Refuse a benchmark whose started or finished cells ran with another config.

    Raises:
        UsageError: their numbers would sit in one table with the new ones.
    """
    for cell, cfg in zip(grid.cells, grid.configs):
        saved = cell.folder(output) / "config.yaml"
        if saved.exists() and saved_config(saved) != to_dict(cfg):
            raise UsageError(f"cell {saved.parent} was run with another config: give a new "
                             "--output for a changed benchmark")
