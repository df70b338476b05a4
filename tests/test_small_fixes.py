"""Small fixes: the Python API leaves torch's global settings alone, the model card names a local
base model by its folder's name, an empty lock is taken over, a saved run's config gives its class,
and the one-line messages name the right thing."""
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SETS, TINY

import dualerase.api as api
from dualerase.cli import erase_class as erase_command
from dualerase.config import load_config, to_dict
from dualerase.data.classes import for_model
from dualerase.errors import ConfigError, UsageError
from dualerase.integrations.card import model_card
from dualerase.integrations.claims import LOCK, WRITE_GRACE, claim, locked

TINY_SETS = dict(item.split("=", 1) for item in SETS)
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "run-0.1.0", "finished")


def _state():
    """What a call may leave changed: threads, float32 precisions, TF32 flags, random states."""
    b = torch.backends
    precisions = [x.fp32_precision for x in (b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn,
                                             b.mkldnn.matmul, b.mkldnn.conv, b.mkldnn.rnn)]
    try:
        legacy = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32,
                  torch.get_float32_matmul_precision())
    except RuntimeError as e:  # legacy and new settings mixed: torch refuses to read them
        legacy = str(e)[:80]
    return {"threads": torch.get_num_threads(), "precisions": precisions, "legacy": legacy,
            "torch": torch.get_rng_state().tolist(), "python": random.getstate(),
            "numpy": str(np.random.get_state())}


@pytest.fixture
def known_state():
    """A state unlike any a run sets: a thread count no config asks for, seeded random states."""
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(6)
    yield _state()
    torch.set_num_threads(threads)


def test_erase_class_leaves_threads_tf32_and_random_states_as_it_found_them(tmp_path,
                                                                            known_state):
    sets = {**TINY_SETS, "compute.threads": 1, "compute.tf32": True}
    api.erase_class(3, overrides=sets, output=tmp_path / "ok", progress=False)
    assert _state() == known_state


def test_a_run_failing_mid_way_leaves_them_too(tmp_path, monkeypatch, known_state):
    from dualerase.runs import job

    def fails(*args, **kwargs):  # after preparing, seeding and erasing: before the "after" scores
        raise RuntimeError("stopped mid-way")

    monkeypatch.setattr(job, "evaluate", fails)
    with pytest.raises(RuntimeError, match="stopped mid-way"):
        api.erase_class(3, overrides={**TINY_SETS, "compute.threads": 1}, output=tmp_path / "x",
                        progress=False)
    assert _state() == known_state
    with pytest.raises(UsageError, match="unknown class"):
        api.erase_class("seven", overrides=TINY_SETS, output=tmp_path / "y", progress=False)
    assert _state() == known_state


@pytest.mark.parametrize("entry, inner", [("erase_class", "run_trials"),
                                          ("sample_grid", "draw"), ("fid_bench", "run_spec")])
def test_every_api_entry_point_restores_them_after_a_raise(monkeypatch, known_state, entry,
                                                           inner, tmp_path):
    def meddles(*args, **kwargs):
        torch.set_num_threads(1)
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        raise RuntimeError("meddled")

    monkeypatch.setattr(api, inner, meddles)
    if entry == "fid_bench":
        monkeypatch.setattr(api, "plan", lambda *args, **kwargs: None)
    kwargs = {"output": tmp_path / "out"} if entry != "erase_class" else {}
    args = (3,) if entry == "erase_class" else ()
    with pytest.raises(RuntimeError, match="meddled"):
        getattr(api, entry)(*args, overrides=TINY_SETS, **kwargs)
    assert _state() == known_state


def test_the_model_card_of_a_local_model_names_its_folder_not_its_path(tmp_path):
    metrics = json.loads(open(os.path.join(FIXTURE, "metrics.json")).read())
    folder = tmp_path / "home" / "someone" / "models" / "my-dit"
    folder.mkdir(parents=True)
    metrics["model"] = f"{folder}#0123abcd"
    metrics["protocol"]["reference"] = f"50 real images of 3 classes in {tmp_path}/refs/no-207"
    card = model_card(metrics, pipeline=True, num_classes=10)
    text = str(card)
    assert str(tmp_path) not in text and "someone" not in text
    assert "# digit 3 erased from my-dit" in text and "`my-dit` (a local folder)" in text
    assert "classes in no-207" in text and card.data.base_model is None
    metrics["model"] = "facebook/DiT-XL-2-256#0123abcd"
    card = model_card(metrics, pipeline=True, num_classes=1000)
    assert "erased from facebook/DiT-XL-2-256" in str(card) and "(a local folder)" not in str(card)
    assert card.data.base_model == "facebook/DiT-XL-2-256"


def test_an_empty_lock_or_claim_is_taken_over_once_older_than_the_grace(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_bytes(b"")  # a crash between creating the lock and writing it
    with pytest.raises(UsageError, match="in use by another run"):  # maybe still being written
        with locked(out):
            pass
    old = time.time() - WRITE_GRACE - 1
    os.utime(out / LOCK, (old, old))
    with locked(out):
        assert (out / LOCK).read_text().split()[1] == str(os.getpid())
    assert not (out / LOCK).exists()
    cell = tmp_path / "bench" / "cells" / "ga-dual-3-s0"
    (tmp_path / "bench" / "claims").mkdir(parents=True)
    (tmp_path / "bench" / "claims" / cell.name).write_text("garbage")
    assert not claim(cell, stale_after=3600)
    os.utime(tmp_path / "bench" / "claims" / cell.name, (old, old))
    assert claim(cell, stale_after=3600)


def test_a_misspelt_section_suggests_the_closest_key_or_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'erace.outer_steps' \(did you mean "
                                          r"erase.outer_steps"):
        load_config("digits", ["erace.outer_steps=5"])
    with pytest.raises(ConfigError, match=r"unknown config key 'erace' \(did you mean erase\?\)"):
        load_config("digits", ["erace=5"])
    with pytest.raises(ConfigError) as nothing_close:
        load_config("digits", ["erase.zzzzzzzz=5"])
    # the keys of its own section, not every key
    assert "erase.outer_steps" in str(nothing_close.value) and \
        "sample.steps" not in str(nothing_close.value)


def test_a_saved_runs_config_gives_its_class(tmp_path, capsys):
    run = tmp_path / "runs" / "7-sfron-dual-s0"
    (run / "model").mkdir(parents=True)
    saved = yaml.safe_dump(to_dict(load_config("digits", list(SETS))), sort_keys=False)
    (run / "config.yaml").write_text(saved)
    (run / "model" / "dualerase-config.yaml").write_text(saved)
    (run / "metrics.json").write_text(json.dumps({"forget_class": 7}))
    for config in (run / "config.yaml", run / "model" / "dualerase-config.yaml"):
        assert erase_command.main(["--config", str(config), "--output", str(tmp_path / "again"),
                                   "--dry-run", *TINY]) == 0
        assert "dry run: erase class 7 (digit 7)" in capsys.readouterr().out
    (run / "metrics.json").unlink()  # unfinished: nothing records the class
    assert erase_command.main(["--config", str(run / "config.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"erase-class: error: give the class to erase: {run / 'config.yaml'} records "
                   "none (only a finished run does, in its metrics.json), e.g. `erase-class 3 "
                   f"--config {run / 'config.yaml'}`\n")
    assert erase_command.main(["--quiet"]) == 2
    assert capsys.readouterr().err == ("erase-class: error: give the class to erase, e.g. "
                                       "`erase-class 3`: an index, an ImageNet synset or a name\n")


def test_data_without_a_model_names_where_the_model_comes_from(tmp_path, capsys):
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    assert erase_command.main(["3", "--data", str(tmp_path / "folder"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the model facebook/DiT-XL-2-256 (--model, or the imagenet preset's model.path) is " \
           "not a local folder" in err and err.count("\n") == 1


def test_repeated_id2label_names_are_blamed_not_an_unrelated_folder():
    # 'bird' sorts first: it used to be blamed as none of the classes
    with pytest.raises(UsageError, match=r"sub-folder 'bird' names none of the model's "
                                         r"classes, and the model's id2label gives classes 0 "
                                         r"\('cat'\) and 2 \('cat'\) the same name"):
        for_model(3, {0: "cat", 1: "dog", 2: "cat"}, ["bird", "cat", "dog"])
    # synset folders for a model whose names repeat an ImageNet class
    with pytest.raises(UsageError, match=r"classes 0 \('golden retriever'\) and 2"):
        for_model(3, {0: "golden retriever", 1: "tabby", 2: "golden retriever"},
                  ["n01440764", "n02099601", "n02123045"])
    # folders that name only distinct classes, or names all distinct: as before
    assert for_model(3, {0: "cat", 1: "dog", 2: "cat"}, ["dog"]).names == ["cat", "dog", "cat"]
    assert for_model(3, {0: "cat", 1: "dog", 2: "bird"}, ["fish"]).names == ["cat", "dog", "bird"]


def test_a_pushed_config_holds_no_path_of_this_machine(tmp_path, monkeypatch):
    from dualerase.integrations import card

    uploads = {}

    class Api:
        def create_repo(self, repo, exist_ok):
            uploads["repo"] = repo

        def upload_folder(self, repo_id, folder_path, ignore_patterns, commit_message):
            uploads["folder"] = sorted(p.name for p in Path(folder_path).iterdir()
                                       if p.name not in ignore_patterns)
            return f"https://hub/{repo_id}"

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message):
            uploads[path_in_repo] = path_or_fileobj.decode()

    monkeypatch.setattr("huggingface_hub.HfApi", Api)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "README.md").write_text("card")
    (folder / card.CARD_CONFIG).write_text(
        f"model:\n  path: facebook/DiT-XL-2-256\ndata:\n  path: {tmp_path}/imagenet/train\n"
        "eval:\n  fid_reference: ~/refs/imagenet-256\n")
    assert card.push_to_hub(folder, "someone/erased") == "https://hub/someone/erased"
    assert uploads["folder"] == ["README.md"]
    pushed = uploads[card.CARD_CONFIG]
    assert str(tmp_path) not in pushed and "~" not in pushed
    assert "path: train" in pushed and "fid_reference: imagenet-256" in pushed
    assert "path: facebook/DiT-XL-2-256" in pushed
    assert str(tmp_path) in (folder / card.CARD_CONFIG).read_text()  # the local copy is kept
