"""The Python API: the three commands as functions, for a notebook or a script.

    from dualerase import erase_class, fid_bench, sample_grid
    result = erase_class(3)
    result.metrics["after"]["forget_accuracy"], result.output, result.model
    sample_grid(["base", result.output], mark=3, output="grid.png")
    fid_bench("digits", classes=[3], seeds=[0, 1], output="bench").rows

Each leaves torch's thread count, TF32 settings and random states as it found them, when it returns
and when it raises.
"""
from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import DiTPipeline, DiTTransformer2DModel

from dualerase.bench.bench import BenchResult, run_spec
from dualerase.bench.cells import plan
from dualerase.config import Config, load_config, model_overrides
from dualerase.errors import UsageError
from dualerase.launch import processes
from dualerase.models.dit import separate_copies
from dualerase.models.pretrained import load_model
from dualerase.runs.checkpoint import default_output
from dualerase.runs.grid import draw
from dualerase.runs.job import run_trials
from dualerase.runs.workload import model_settings
from dualerase.storage import cache_root, fingerprint, replace_folder

# the float32 precision (TF32 or IEEE) settings of each backend, torch.backends.<path>
PRECISIONS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv",
              "mkldnn.rnn")
CUDA_DEFAULT_SEED = 67280421310721  # a CUDA generator's seed before anything seeds it


@contextlib.contextmanager
def _kept_global_state():
    """Torch's thread count, float32 precisions (TF32) and random states (torch's, CUDA's, numpy's
    and Python's) as they were before, once the call returns or raises."""
    backends = [functools.reduce(getattr, path.split("."), torch.backends) for path in PRECISIONS]
    precisions = [b.fp32_precision for b in backends]
    threads, cuda = torch.get_num_threads(), torch.cuda.is_initialized()
    rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None
    py_rng, np_rng = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for backend, precision in zip(backends, precisions):
            backend.fp32_precision = precision
        torch.set_rng_state(rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        elif torch.cuda.is_initialized():  # started by the call: as unseeded
            torch.cuda.manual_seed_all(CUDA_DEFAULT_SEED)


@dataclass
class ErasureResult:
    """What `erase_class` gives: metrics.json's content, the run folder, the erased model.

    The model is the erased transformer, in memory.
    """

    metrics: dict
    output: Path
    model: DiTTransformer2DModel


@_kept_global_state()
def erase_class(forget_class: int | str, *, config: str | Path | Config = "digits",
                overrides: dict | None = None,
                model: str | Path | DiTTransformer2DModel | DiTPipeline | None = None,
                output: str | Path | None = None, trials: int = 1, overwrite: bool = False,
                resume: str | None = None, progress: bool = True,
                report_to: list[str] = ()) -> ErasureResult:
    """Erase `forget_class` and measure the model before and after, as `erase-class` does.

    Args:
        forget_class: an id, a synset or a name.
        config: a preset name, a YAML path, or a Config.
        overrides: {"dotted.key": value}, as `--set`.
        model: a hub id or folder (as `--model`), or a DiTTransformer2DModel / DiTPipeline in
            memory, which is saved once into the cache (keyed by its weights) and run from there; a
            model other than the digits default needs data.path and eval.fid_reference in
            `overrides`.
        output: the run folder; defaults to runs/<class>-<method>-<optimizer>-s<seed>.
        report_to: trackers, as `--report-to`.

    Returns:
        metrics.json's content, the run folder and the erased model.

    Raises:
        dualerase.errors.UsageError, ConfigError: bad input.
        dualerase.unlearn.DivergenceError: erasure diverges.
    """
    sets = _sets(overrides)
    if model is not None:
        sets = model_overrides(_model_folder(model)) + sets
    cfg = _config(config, "digits", sets)
    cls = str(forget_class)
    out = Path(output) if output is not None else default_output(cls, cfg)
    metrics = run_trials(cfg, cls, out, trials, overwrite=overwrite, resume=resume,
                         progress=progress, report_to=report_to)
    folder = out / "model" if trials == 1 else out / f"trial-s{cfg.seed}" / "model"
    erased = load_model(folder, **model_settings(cfg)).to(processes().device)
    return ErasureResult(metrics=metrics, output=out, model=erased)


@_kept_global_state()
def sample_grid(models: list[str | Path] = ("base",), *,
                config: str | Path | Config | None = None, model: str | Path | None = None,
                overrides: dict | None = None, output: str | Path = "grid.png",
                per_class: int = 8, classes: list[int | str] | None = None,
                mark: int | str | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Draw what each model generates per class with the same noise, as `sample-grid` does.

    Args:
        models: "base" (the config's base model), model folders or erase_class output folders.
        model: the base model as a hub id or folder (as `--model`).
        classes: ids, synsets or names (default: all, at most eval.grid_classes).
        mark: a class to frame in red.

    Returns:
        The PNG's path.
    """
    sets = model_overrides(model) + _sets(overrides)
    cfg = _config(config, "imagenet" if model is not None else "digits", sets)
    draw(cfg, [str(m) for m in models], Path(output), per_class=per_class, classes=classes,
         mark=mark, seed=seed, progress=progress)
    return Path(output)


@_kept_global_state()
def fid_bench(spec: str | Path = "digits", *, output: str | Path = "bench",
              classes: list[int | str] | None = None, methods: list[str] | None = None,
              optimizers: list[str] | None = None, seeds: list[int] | None = None,
              overrides: dict | None = None, progress: bool = True) -> BenchResult:
    """Run a benchmark spec as `fid-bench` does, choices overriding the spec.

    `spec` is a shipped spec's name or a YAML path. Finished cells in `output` are reused, and a
    killed benchmark continues where it stopped.

    Returns:
        Its table: `.rows` (results.csv's rows), `.cells` (each cell's metrics), `.table`
        (results.md).
    """
    grid = plan(str(spec), classes=classes, methods=methods, optimizers=optimizers, seeds=seeds,
                overrides=_sets(overrides))
    return run_spec(grid, Path(output), progress=progress, command=f"fid_bench({str(spec)!r})")


def _sets(overrides: dict | None) -> list[str]:
    """{"dotted.key": value} as `--set` items.

    None, booleans, numbers and lists are written as YAML (None: null, True: true, 1e-4, [1, 2]),
    anything else (a string, a path) as its text."""
    def text(value):
        if value is None or isinstance(value, (bool, int, float, list, tuple)):
            return yaml.safe_dump(value, default_flow_style=True,
                                  width=float("inf")).split("\n...")[0].strip()
        return str(value)

    return [f"{key}={text(value)}" for key, value in (overrides or {}).items()]


def _config(config: str | Path | Config | None, default: str, sets: list[str]) -> Config:
    """A preset name, a YAML path or a Config in memory, with `--set` items applied."""
    return load_config(config if config is not None else default, sets)


def _model_folder(model) -> str:
    """A hub id or folder as given; an in-memory model saved once into the cache.

    The model's folder in the cache is named by its weights."""
    if isinstance(model, (str, Path)):
        return str(model)
    if isinstance(model, DiTPipeline):
        transformer = model.transformer
    elif isinstance(model, DiTTransformer2DModel):
        transformer = model
    else:
        raise UsageError("model must be a hub id, a folder, a DiTTransformer2DModel or a "
                         f"DiTPipeline, not {type(model).__name__}")
    digest = fingerprint([(name, _tensor_digest(t))
                          for name, t in transformer.state_dict().items()])
    folder = cache_root() / "in-memory" / digest
    if not (folder / "model_index.json").exists() and not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        with separate_copies(transformer):
            model.save_pretrained(tmp)
        if isinstance(model, DiTPipeline) and getattr(model, "labels", None):
            _keep_labels(tmp, model.labels)
        replace_folder(tmp, folder)
    return str(folder)


def _tensor_digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(
        t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _keep_labels(folder: Path, labels: dict[str, int]) -> None:
    """Write back the class names that DiTPipeline.save_pretrained drops.

    The pipeline keeps them as name -> id, each synonym apart; model_index.json's id2label gives
    them back to us and to diffusers."""
    import json

    names: dict[int, list[str]] = {}
    for name, i in labels.items():
        names.setdefault(int(i), []).append(name)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): ", ".join(names[i]) for i in sorted(names)}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
