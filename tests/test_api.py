"""The Python API: the package's public names, the README's notebook example, a base model in
memory, and sample_grid and fid_bench as functions."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import SETS, changed
from diffusers import DiTPipeline
from safetensors.torch import load_file
from tiny_imagenet import ROBUSTNESS, build_world

from dualerase.api import erase_class
from dualerase.config import load_config
from dualerase.errors import UsageError

TINY_SETS = dict(item.split("=", 1) for item in SETS)


def test_erase_class_returns_scores_folder_and_the_erased_model(tmp_path):
    result = erase_class(3, overrides=TINY_SETS, output=tmp_path / "api", progress=False)
    assert result.output == tmp_path / "api"
    assert result.metrics == json.loads((result.output / "metrics.json").read_text())
    assert result.metrics["forget_class"] == 3 and result.metrics["outer_steps"] == 3
    saved = load_file(str(result.output / "model" / "diffusion_pytorch_model.safetensors"))
    assert changed(result.model, saved) == []


def test_a_config_object_and_a_config_name_give_the_same_run(tmp_path):
    cfg = load_config("digits", [f"{k}={v}" for k, v in TINY_SETS.items()])
    by_object = erase_class("3", config=cfg, output=tmp_path / "object", progress=False)
    by_name = erase_class("3", overrides=TINY_SETS, output=tmp_path / "name", progress=False)
    assert by_object.metrics["after"] == by_name.metrics["after"]


def test_bad_input_raises_the_cli_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown class"):
        erase_class("seven", overrides=TINY_SETS, output=tmp_path / "x", progress=False)
    with pytest.raises(UsageError, match="DiTPipeline"):
        erase_class(3, model=torch.nn.Linear(1, 1), output=tmp_path / "y", progress=False)


def test_a_pipeline_in_memory_erases_as_its_folder_does(tmp_path):
    world = build_world(tmp_path / "world")
    sets = {"eval.fa_classifier": "test_resnet", "eval.fa_weights": world["classifier"],
            "eval.fa_size": 32, "eval.fid_reference": world["reference"],
            "eval.fid_weights": world["inception"], "eval.forget_samples": 4,
            "eval.retain_samples": 6, "eval.grid_per_class": 2, "eval.grid_classes": 3,
            "sample.steps": 3, "sample.batch_size": 4, "erase.outer_steps": 2,
            "erase.batch_size": 2, "method.grad_samples": 4, "data.retain_images": 10,
            "data.path": world["data"], **ROBUSTNESS}
    pipe = DiTPipeline.from_pretrained(world["model"])
    in_memory = erase_class("golden retriever", config="imagenet", model=pipe, overrides=sets,
                            output=tmp_path / "memory", progress=False)
    from_folder = erase_class("golden retriever", config="imagenet", model=world["model"],
                              overrides=sets, output=tmp_path / "folder", progress=False)
    assert in_memory.metrics["forget_class"] == 207
    assert in_memory.metrics["after"] == from_folder.metrics["after"]
    assert changed(in_memory.model, from_folder.model) == []


def test_importing_the_api_leaves_matplotlib_and_torch_settings_alone():
    code = ("import os, sys; import dualerase.api; "
            "print('matplotlib.pyplot' in sys.modules, os.environ.get('MKL_CBWR'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    # the one documented setting: bitwise-reproducible MKL results
    assert out == ["False", "AUTO,STRICT"]


def test_the_readme_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    import dualerase.api

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)
    real = dualerase.api.erase_class

    # the example as written, at the tests' tiny scale
    def shrunk(*args, overrides=None, output=None, **kwargs):
        return real(*args, overrides={**(overrides or {}), **TINY_SETS},
                    output=tmp_path / Path(output).name, progress=False, **kwargs)

    monkeypatch.setattr(dualerase.api, "erase_class", shrunk)
    scope = {}
    exec(example, scope)
    assert scope["result"].metrics["outer_steps"] == 3 and \
        (tmp_path / "notebook-3" / "metrics.json").exists()


def test_one_package_with_its_public_api_version_and_types():
    import importlib.metadata
    from pathlib import Path

    import dualerase
    from dualerase import Config, ErasureResult, erase_class, fid_bench, load_config, sample_grid  # noqa: F401
    from dualerase.unlearn import METHODS, EraseConfig, unlearn  # noqa: F401  (for people who bring their own loop)

    assert dualerase.__version__ == importlib.metadata.version("dualerase")
    assert all(getattr(dualerase, name) is not None for name in dualerase.__all__)
    assert set(METHODS) == {"ga", "sfron", "salun", "sa"}
    assert (Path(dualerase.__file__).parent / "py.typed").exists()
    with pytest.raises(AttributeError, match="no attribute 'erase'"):
        dualerase.erase  # noqa: B018


def test_importing_dualerase_alone_loads_no_torch():
    code = "import sys, dualerase; print('torch' in sys.modules, dualerase.__version__ != '')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "True"]


def test_help_version_and_bad_arguments_are_answered_without_torch():
    """Every command parses its arguments before importing torch (start-up times:
    benchmarks/startup.py)."""
    from dualerase.cli import METHOD_NAMES
    from dualerase.unlearn import METHODS

    # the choices --method offers without importing them
    assert METHOD_NAMES == tuple(sorted(METHODS))
    for command in ("erase_class", "sample_grid", "fid_bench", "fid_reference"):
        for args, code in ((["--help"], 0), (["--version"], 0), (["--bogus"], 2)):
            probe = (f"import sys; from dualerase.cli.{command} import main; code = "
                     f"main({args!r}); print(code, 'torch' in sys.modules)")
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
            assert done.stdout.split()[-2:] == [str(code), "False"], \
                (command, args, done.stderr[-2000:])


def test_python_m_dualerase_runs_each_command_and_says_its_version():
    import importlib.metadata

    for command in ("erase-class", "sample-grid", "fid-bench", "fid-reference"):
        done = subprocess.run([sys.executable, "-m", "dualerase", command, "--help"],
                              capture_output=True, text=True)
        assert done.returncode == 0 and f"usage: {command}" in done.stdout, command
    version = importlib.metadata.version("dualerase")
    for command in (["erase-class"], ["fid-bench"], []):
        done = subprocess.run([sys.executable, "-m", "dualerase", *command, "--version"],
                              capture_output=True, text=True)
        assert done.returncode == 0 and \
            done.stdout.strip().endswith(version + (" (dualerase)" if command else ""))
    wrong = subprocess.run([sys.executable, "-m", "dualerase", "erase"], capture_output=True,
                           text=True)
    assert wrong.returncode == 2 and "unknown command 'erase'" in wrong.stderr and \
        "erase-class" in wrong.stderr


def test_sample_grid_and_fid_bench_as_functions_do_what_their_commands_do(tmp_path):
    from conftest import TINY

    from dualerase import fid_bench, sample_grid
    from dualerase.cli import fid_bench as bench_command
    from dualerase.cli import sample_grid as grid_command

    png = sample_grid(["base"], overrides=TINY_SETS, classes=[3, "5"], per_class=2, mark=3,
                      output=tmp_path / "api.png", progress=False)
    assert grid_command.main(["base", "--classes", "3", "5", "--per-class", "2", "--mark", "3",
                              "--output", str(tmp_path / "cli.png"), *TINY]) == 0
    assert png == tmp_path / "api.png" and png.read_bytes() == (tmp_path / "cli.png").read_bytes()

    result = fid_bench("digits", methods=["ga"], optimizers=["dual"], classes=[3], seeds=[0],
                       overrides=TINY_SETS, output=tmp_path / "bench", progress=False)
    # no "all" row
    assert [(r["method"], r["optimizer"], r["class"]) for r in result.rows] == [("ga", "dual", "3")]
    assert result.table == (tmp_path / "bench" / "results.md").read_text()
    assert [c["forget_class"] for c in result.cells] == [3] and not result.pending and \
        not result.diverged
    assert bench_command.main(["digits", "--methods", "ga", "--optimizers", "dual", "--classes",
                               "3", "--seeds", "0", "--output", str(tmp_path / "bench"),
                               "--aggregate", *TINY]) == 0
    cli_rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    assert cli_rows == result.rows  # the command over the same cells: the same table
    with pytest.raises(UsageError, match="unknown benchmark spec 'nope'"):
        fid_bench("nope", output=tmp_path / "none")


def test_overrides_take_python_values(tmp_path):
    import yaml

    overrides = {**TINY_SETS, "erase.retain_clip": None, "eval.save_samples": False,
                 "erase.forget_lr": 3e-4}
    result = erase_class(3, overrides=overrides, output=tmp_path / "py", progress=False)
    saved = yaml.safe_load((result.output / "config.yaml").read_text())
    # not 'None', 'False'
    assert saved["erase"]["retain_clip"] is None and saved["eval"]["save_samples"] is False
    assert saved["erase"]["forget_lr"] == 3e-4 and not (result.output / "samples").exists()
