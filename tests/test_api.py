"""The Python API (pipelines.api.erase_class): the README's notebook example, and a base model given in memory."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import SETS, changed
from diffusers import DiTPipeline
from safetensors.torch import load_file
from tiny_imagenet import build_world

from pipelines.api import erase_class
from pipelines.config import load_config
from pipelines.errors import UsageError

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
    sets = {"eval.fa_classifier": "test_resnet", "eval.fa_weights": world["classifier"], "eval.fa_size": 32,
            "eval.fid_reference": world["reference"], "eval.fid_weights": world["inception"],
            "eval.forget_samples": 4, "eval.retain_samples": 6, "eval.grid_per_class": 2, "eval.grid_classes": 3,
            "sample.steps": 3, "sample.batch_size": 4, "erase.outer_steps": 2, "erase.batch_size": 2,
            "method.grad_samples": 4, "data.retain_images": 10, "data.path": world["data"]}
    pipe = DiTPipeline.from_pretrained(world["model"])
    in_memory = erase_class("golden retriever", config="imagenet", model=pipe, overrides=sets,
                            output=tmp_path / "memory", progress=False)
    from_folder = erase_class("golden retriever", config="imagenet", model=world["model"], overrides=sets,
                              output=tmp_path / "folder", progress=False)
    assert in_memory.metrics["forget_class"] == 207
    assert in_memory.metrics["after"] == from_folder.metrics["after"]
    assert changed(in_memory.model, from_folder.model) == []


def test_importing_the_api_leaves_matplotlib_and_torch_settings_alone():
    code = ("import os, sys; import pipelines.api; "
            "print('matplotlib.pyplot' in sys.modules, os.environ.get('MKL_CBWR'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "AUTO,STRICT"]  # the one documented setting: bitwise-reproducible MKL results


def test_the_readme_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    import pipelines.api

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)
    real = pipelines.api.erase_class

    def shrunk(*args, overrides=None, output=None, **kwargs):  # the example as written, at the tests' tiny scale
        return real(*args, overrides={**(overrides or {}), **TINY_SETS}, output=tmp_path / Path(output).name,
                    progress=False, **kwargs)

    monkeypatch.setattr(pipelines.api, "erase_class", shrunk)
    scope = {}
    exec(example, scope)
    assert scope["result"].metrics["outer_steps"] == 3 and (tmp_path / "notebook-3" / "metrics.json").exists()
