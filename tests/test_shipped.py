"""The digits DiT and classifier shipped inside the package: they match their manifest, the default
recipe installs them instead of training, and a fresh training by the recipe lands within the
manifest's quality bounds (slow)."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualerase.config import load_config
from dualerase.errors import ModelError
from dualerase.models import digits, shipped
from dualerase.storage import file_digest

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_files_match_the_manifest():
    manifest = shipped.shipped_manifest()
    for kind in ("dit", "classifier"):
        files = manifest[kind]["files"]
        assert files, kind
        for name, digest in files.items():
            data = (shipped.WEIGHTS / kind / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, name
    cfg = load_config("digits")  # the names are the default recipes' cache names
    assert manifest["dit"]["name"] == digits.dit_folder(cfg.digits).name
    assert manifest["classifier"]["name"] == digits.classifier_path(cfg.classifier).name
    assert manifest["quality"]["recipes"]["digits"] == digits.recipe_key(cfg.digits)
    assert manifest["bounds"]["fid_max"] > manifest["quality"]["dit"]["fid"]


def test_the_default_recipe_installs_the_shipped_weights_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the shipped weights are the recipe's")

    monkeypatch.setattr(digits, "train_digits_dit", no_training)
    monkeypatch.setattr("dualerase.metrics.classifier.train_classifier", no_training)
    cfg = load_config("digits")
    folder = digits.prepare_digits_dit(cfg.digits, progress=False)
    path, accuracy = digits.prepare_digits_classifier(cfg.classifier, progress=False)
    manifest = shipped.shipped_manifest()
    assert {p.name: file_digest(p) for p in folder.iterdir()} == manifest["dit"]["files"]
    assert file_digest(path) == manifest["classifier"]["files"][path.name]
    assert accuracy == pytest.approx(manifest["quality"]["classifier"]["held_out_accuracy"])
    # asked to train, or with another recipe, nothing shipped is used
    other = load_config("digits", ["digits.shipped=false", "digits.steps=10"])
    assert not shipped.install_shipped("dit", digits.dit_folder(other.digits))


def test_the_digits_models_train_on_digits_train_threads_and_put_the_count_back(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path))
    seen = []
    real_dit = digits.train_digits_dit
    real_classifier = __import__("dualerase.metrics.classifier", fromlist=["x"]).train_classifier

    def dit(*args, **kwargs):
        seen.append(("dit", torch.get_num_threads()))
        return real_dit(*args, **kwargs)

    def classifier(*args, **kwargs):
        seen.append(("classifier", torch.get_num_threads()))
        return real_classifier(*args, **kwargs)

    monkeypatch.setattr(digits, "train_digits_dit", dit)
    monkeypatch.setattr("dualerase.metrics.classifier.train_classifier", classifier)
    torch.set_num_threads(2)
    for threads, expected in (("1", 1), ("null", 2)):
        cfg = load_config("digits", ["digits.shipped=false", "digits.steps=2",
                                     "classifier.epochs=1", f"digits.train_threads={threads}"])
        folder = digits.prepare_digits_dit(cfg.digits, progress=False)
        digits.prepare_digits_classifier(cfg.classifier, False, False, cfg.digits.train_threads)
        assert seen == [("dit", expected), ("classifier", expected)]
        assert torch.get_num_threads() == 2
        seen.clear()  # the next count trains anew: the same recipe names the same folder
        shutil.rmtree(folder)
        digits.classifier_path(cfg.classifier).unlink()
    # the thread count is not part of the model's name
    assert digits.dit_folder(load_config("digits", ["digits.train_threads=3"]).digits) == \
        digits.dit_folder(load_config("digits").digits)


def test_a_damaged_shipped_file_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    for kind in ("dit", "classifier"):
        (copy / kind).mkdir(parents=True)
        for name in shipped.shipped_manifest()[kind]["files"]:
            (copy / kind / name).write_bytes((shipped.WEIGHTS / kind / name).read_bytes())
    (copy / shipped.MANIFEST).write_text(json.dumps(shipped.shipped_manifest()))
    names = shipped.shipped_manifest()["dit"]["files"]
    weights = next(n for n in names if n.endswith(".safetensors"))
    (copy / "dit" / weights).write_bytes(b"damaged")
    monkeypatch.setattr(shipped, "WEIGHTS", copy)
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelError, match="does not match its digest.*digits.shipped=false"):
        digits.prepare_digits_dit(load_config("digits").digits, progress=False)
    assert not digits.dit_folder(load_config("digits").digits).exists()  # nothing half-installed


@pytest.mark.slow
def test_a_fresh_training_by_the_recipe_lands_within_the_manifests_bounds():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_weights.py")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "within the manifest's bounds" in done.stdout
