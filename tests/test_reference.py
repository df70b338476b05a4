"""The retrained reference: the digits DiT trained again without every image of the forget class,
cached under a name that says so, and never mistaken for another class's."""
import dataclasses
import shutil

import pytest
import torch

from dualerase.config import load_config
from dualerase.errors import ModelError
from dualerase.models import digits


def test_the_references_training_set_holds_no_image_of_the_class():
    recipe = load_config("digits").digits
    x, y = digits.training_set(recipe)
    rx, ry = digits.training_set(dataclasses.replace(recipe, exclude=3))
    assert (ry == 3).sum() == 0 and (y == 3).sum() > 0
    assert len(ry) == len(y) - int((y == 3).sum())
    assert torch.equal(rx, x[y != 3])  # the same images otherwise, in the same order
    held_out = digits.train_test_split(digits.load_digits()[1])[1]
    assert len(y) + len(held_out) == 1797  # the held-out split is in neither


def test_the_reference_is_cached_by_name_and_refused_for_another_class(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path))
    recipe = load_config("digits", ["digits.steps=2"]).digits
    folder = digits.prepare_retrained(recipe, 3, progress=False)
    assert folder.name.endswith("-without-3") and folder != digits.dit_folder(recipe)
    assert digits.prepare_retrained(recipe, 3, progress=False) == folder  # cached
    other = digits.dit_folder(dataclasses.replace(recipe, exclude=1, shipped=False))
    shutil.copytree(folder, other)  # a reference of digit 3 where digit 1's belongs
    with pytest.raises(ModelError, match="trained without digit 3, not 1"):
        digits.prepare_retrained(recipe, 1, progress=False)
    # the base recipe's folder and fingerprint are those of before the key
    assert "exclude" not in digits.recipe_key(recipe)
