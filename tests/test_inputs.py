"""Inputs and outputs that used to go wrong silently.

Odd image formats, stray folders, stale caches, cut-off labels."""
import copy
import errno
import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY, own_cache
from PIL import Image, ImageDraw

from dualerase.bench import bench
from dualerase.cli import erase_class, fid_reference
from dualerase.cli import sample_grid as grid_command
from dualerase.data import folders as data
from dualerase.data.folders import load_images
from dualerase.metrics.fid import DigitsScorer
from dualerase.reports.summary import sample_grid, summary
from dualerase.runs import grid, job
from dualerase.storage import atomic_write_json


def _png16(path, value):
    Image.fromarray(np.asarray(value, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def test_16_bit_pngs_decode_at_their_grey_level(tmp_path):
    # black, mid-grey, white
    ramp = np.tile(np.array([0, 65535 // 2, 65535], dtype=np.uint16).repeat(4), (12, 1))
    images, kept = load_images([_png16(tmp_path / "ramp.png", ramp),
                                _png16(tmp_path / "grey.png", np.full((9, 9), 32768))], 12, 3,
                               "test", progress=False)
    assert kept == [0, 1]
    pixels = ((images + 1) * 127.5).round()
    assert pixels[0, :, 6, :4].eq(0).all()
    assert pixels[0, :, 6, 8:].eq(255).all()
    assert pixels[0, :, 6, 5:7].sub(127.5).abs().max() <= 1
    assert pixels[1].sub(128).abs().max() <= 1


def test_fid_reference_writes_16_bit_pngs_at_their_grey_level(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    # a quarter grey: 64
    _png16(tmp_path / "train" / "n01440764" / "a.png", np.full((20, 20), 16384))
    assert fid_reference.main(["--data", str(tmp_path / "train"), "--output", str(tmp_path / "ref"),
                               "--size", "8", "--quiet"]) == 0
    out = np.asarray(Image.open(tmp_path / "ref" / "n01440764" / "a.png"))
    assert out.shape == (8, 8, 3)
    assert abs(int(out.max()) - 64) <= 1
    assert abs(int(out.min()) - 64) <= 1


def test_grid_labels_and_panel_titles_fit_their_columns(tmp_path):
    names = ["golden retriever, Canis familiaris, a long name", "tench"]
    titles = ["runs/golden_retriever-sfron-dual-s0/model/transformer", "base"]
    blue = torch.tensor([0, 0, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 8, 8)
    labels = torch.tensor([0, 0, 1, 1])
    grid = sample_grid({t: blue for t in titles}, labels, names, marked=0)
    grid.save(tmp_path / "grid.png")
    arr = np.asarray(grid)
    is_blue = (arr == [0, 0, 255]).all(-1).any(0)
    starts = [x for x in range(arr.shape[1]) if is_blue[x] and not is_blue[x - 1]]
    # 2 images per panel: each panel starts with a run of blue
    panels = [starts[0], starts[len(starts) // 2]]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    # the longest label ends before the first image
    assert 4 + measure(names[0] + "  (erased)") < panels[0]
    assert panels[0] + measure(titles[0]) < panels[1]  # each title ends before the next panel
    assert panels[1] + measure(titles[1]) <= grid.width


def test_a_non_finite_fid_is_written_as_null_with_its_reason(tmp_path, monkeypatch, capsys):
    # these scores must not land in the shared cache; the trained digits models may
    own_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(
        DigitsScorer, "fidelity", lambda self, samples, forget_class, classes=None: {
            "fid": float("inf"), "kid": 0.01, "precision": 0.5, "recall": 0.5})
    out = tmp_path / "run"
    assert erase_class.main(["3", "--output", str(out), *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text(),
                   parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    for side in ("before", "after"):
        assert m[side]["fid"] is None
        assert m[side]["fid_error"].startswith("not finite (torch-fidelity gave inf)")
        assert 0 <= m[side]["forget_accuracy"] <= 1
    printed = capsys.readouterr().out
    assert "FID before: not finite" in printed
    assert "FID after: not finite" in printed
    fid_row = next(line for line in printed.splitlines() if line.startswith("FID ("))
    assert fid_row.split()[-2:] == ["n/a", "n/a"]
    other = copy.deepcopy(m)  # a second trial whose FID was finite
    other["seed"], other["before"]["fid"], other["after"]["fid"] = 1, 2.0, 3.0
    trials = job.aggregate_trials([m, other])
    assert trials["after"]["fid"] == 3.0
    assert "1 of 2 trials" in trials["after"]["fid_error"]
    assert "FID after: not finite in 1 of 2 trials" in summary(trials)
    # one finite value has no spread, not a spread of 0
    assert trials["std"]["after"]["fid"] is None
    assert "3.000 +- n/a" in summary(trials)
    table = bench.markdown(bench.aggregate([m]), [m], "fid-bench")
    assert "| n/a +- n/a |" in table
    # one seed: no spread, not +- 0.000
    assert f"| {m['after']['forget_accuracy']:.3f} +- n/a |" in table
    assert "FID was not finite in 2 evaluation(s)" in table
    assert "| 3 | " in table.split("Base model")[1]
    assert "n/a |" in table.split("Base model")[1]
    with pytest.raises(ValueError):  # so that Infinity can never reach a JSON file again
        atomic_write_json(tmp_path / "bad.json", {"fid": float("nan")})
    assert not (tmp_path / "bad.json").exists()


def test_fid_reference_names_a_stray_folder_among_synsets(tmp_path, capsys):
    for synset in ("n01440764", "n02099601", "lost+found"):
        (tmp_path / "train" / synset).mkdir(parents=True)
        Image.new("RGB", (12, 12), "gray").save(tmp_path / "train" / synset / "a.png")
    code = fid_reference.main(["--data", str(tmp_path / "train"), "--output", str(tmp_path / "ref"),
                               "--exclude", "golden retriever", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "sub-folder 'lost+found' is not an ImageNet synset" in err, err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "ref").exists()


def test_a_full_or_forbidden_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # Tests run as root, whom permissions do not stop: simulate the probe failing as on a full disk.
    # The real probe is exercised by the bad-input tables (a path under /sys, a path under a
    # regular file).
    def full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data, "_probe", full)
    monkeypatch.setattr(job, "prepare",
                        lambda *a, **k: pytest.fail("started work on an unwritable output"))
    monkeypatch.setattr(grid, "load_models",
                        lambda *a, **k: pytest.fail("loaded models for nothing"))
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    commands = [(erase_class.main, ["3", "--output", str(tmp_path / "run"), *TINY]),
                (grid_command.main, ["--output", str(tmp_path / "grid.png"), "--quiet"]),
                (fid_reference.main, ["--data", str(tmp_path / "train"), "--output",
                                      str(tmp_path / "ref")])]
    for command, argv in commands:
        assert command(argv) == 2
        err = capsys.readouterr().err
        assert "cannot be written" in err, err
        assert "No space left on device" in err, err
        assert err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_digits_scores_are_keyed_by_the_classifier_content(tmp_path):
    from dualerase.metrics.classifier import ClassifierRecipe, DigitsNet, save_classifier

    path = tmp_path / "classifier.safetensors"
    torch.manual_seed(0)
    save_classifier(DigitsNet(), path, ClassifierRecipe(), 0.9)
    key, st = DigitsScorer(None, path, 0.9, None, None).key, path.stat()
    torch.manual_seed(1)  # retrained in place: same size, the old modification time put back
    save_classifier(DigitsNet(), path, ClassifierRecipe(), 0.9)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert DigitsScorer(None, path, 0.9, None, None).key != key
