"""What an earlier version wrote still loads, resumes and reports.

Runs, configs, caches, model folders and checkpoints."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualerase.cli import erase_class, sample_grid

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"
SETS = ["digits.steps=30", "digits.layers=1", "digits.heads=2", "digits.head_dim=8",
        "classifier.epochs=1", "method.grad_samples=4", "erase.outer_steps=4",
        "erase.checkpoint_every=2", "erase.batch_size=8", "sample.steps=4",
        "eval.forget_samples=10", "eval.retain_samples_per_class=10", "eval.grid_per_class=2"]
ARGS = ["--quiet"] + [a for s in SETS for a in ("--set", s)]


def _sample_folders(samples: Path) -> None:
    """samples/forget/ and samples/retain/ as 0.1.0 wrote them: one PNG per image of the .npz.

    The PNGs sit beside the .npz (the fixture keeps the arrays only; the PNGs held the same
    pixels)."""
    for side in ("forget", "retain"):
        images = np.load(samples / f"{side}.npz")["arr_0"]
        (samples / side).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image[..., 0]).save(samples / side / f"{i:06d}.png")


@pytest.fixture
def old(tmp_path, monkeypatch):
    """A copy of the fixture, its cache as DUALERASE_HOME.

    Yields (folder, {cache file: mtime} as written)."""
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    _sample_folders(tmp_path / "finished" / "samples")
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path / "home"))
    yield tmp_path, {p: p.stat().st_mtime_ns for p in (tmp_path / "home").rglob("*") if p.is_file()}


def test_a_run_written_by_0_1_0_resumes_and_reports_again(old, capsys):
    folder, made = old
    out = folder / "run"
    # unfinished: it asks for --resume
    assert erase_class.main(["3", "--output", str(out), *ARGS]) == 2
    # The digits preset's FA rule changed since ("not a digit" instead of the two gates): the same
    # options are refused, naming the change; the run's own config.yaml resumes it.
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *ARGS]) == 2
    assert "eval.fa_min_confidence 0.9 -> None" in capsys.readouterr().err
    own = ["--config", str(out / "config.yaml")]
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *own, *ARGS]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # 0 and 1 from the old run; 2 and 3 continue from its checkpoint-2
    metrics = json.loads((out / "metrics.json").read_text())
    # the run's rule
    assert metrics["protocol"]["forget_rule"].startswith("top class with probability >= 0.9")
    # The old cache's digits DiT, mask and files were read, not made again; the classifier of the
    # new recipe (an 11th class) is new, and so are the base scores measured with it.
    assert {p: p.stat().st_mtime_ns for p in made} == made
    new = [p for p in (folder / "home" / "evals").glob("*.json") if p not in made]
    assert len(new) == 1 and metrics["before"] == json.loads(new[0].read_text())
    assert (out / "model" / "diffusion_pytorch_model.safetensors").exists()

    # finished
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *own, *ARGS]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_a_finished_run_written_by_0_1_0_reports_again_and_its_model_samples(old, capsys):
    folder, made = old
    out = folder / "finished"
    written = (out / "metrics.json").read_bytes()
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", "--config",
                             str(out / "config.yaml"), *ARGS]) == 0
    assert (out / "metrics.json").read_bytes() == written
    assert "retain accuracy" in capsys.readouterr().out  # its summary, printed again
    # Its model folder (with dualerase.json) and the old cache's base model sample side by side.
    grid = folder / "grid.png"
    assert sample_grid.main([str(out), "base", "--classes", "3", "--per-class", "2", "--output",
                             str(grid), *ARGS]) == 0
    assert grid.stat().st_size > 0 and {p: p.stat().st_mtime_ns for p in made} == made
