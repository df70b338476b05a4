"""State that runs share, held by a lock or a fingerprint: one run per output folder, one model per
resumed run, one class order per model; and every other way a run can go wrong (a full disk, an
undefined FID, Ctrl-C, a model saved as a variant): one line that says what to do, never a mixed
folder or a traceback."""
import copy
import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, changed, folder_snapshot
from diffusers import DiTPipeline, DiTTransformer2DModel
from safetensors.torch import load_file, save_file
from tiny_imagenet import build_pipeline, build_world, erase_args

from dualerase.cli import erase_class, fid_bench, sample_grid
from dualerase.data.classes import Classes
from dualerase.data.folders import scan
from dualerase.errors import ModelError, UsageError
from dualerase.integrations.card import model_card
from dualerase.integrations.claims import LOCK
from dualerase.metrics.fid import DigitsScorer
from dualerase.models.dit import build_dit, describe_model, embedder_difference, embedders_tied
from dualerase.models.pretrained import match_training
from dualerase.reports.summary import protocol_line
from dualerase.runs import erasure, job

LONG = TINY + ["--set", "erase.outer_steps=40", "--set", "erase.checkpoint_every=5", "--set",
               "sample.steps=20"]


def _cli(*args):
    return [sys.executable, "-c",
            "import sys; from dualerase.cli.erase_class import main; sys.exit(main())", *args]


def test_a_second_run_on_an_output_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        out.mkdir()
        (out / LOCK).write_text(f"{socket.gethostname()} {holder.pid}")
        for extra in ([], ["--overwrite"], ["--resume", "latest"]):
            assert erase_class.main(["3", "--output", str(out), *TINY, *extra]) == 2
            err = capsys.readouterr().err
            assert f"in use by another run (process {holder.pid} on " \
                   f"{socket.gethostname()}" in err, err
            assert err.count("\n") == 1
        # nothing written, the holder's lock kept
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()
    # its holder is dead: the lock is taken over
    assert erase_class.main(["3", "--output", str(out), *TINY]) == 0
    assert (out / "metrics.json").exists() and not (out / LOCK).exists()


def test_two_runs_on_one_output_at_once_leave_the_first_intact(tmp_path, capsys):
    out = tmp_path / "out"
    first = subprocess.Popen(_cli("3", "--output", str(out), *LONG), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 600  # a bound on a hang, not a timing target
    while not ((out / LOCK).exists() or (out / "config.yaml").exists()):
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    second = erase_class.main(["3", "--output", str(out), "--overwrite", "--seed", "1", *LONG])
    assert first.wait() == 0
    assert second == 2 and "in use by another run" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 0 and "seed: 0" in (out / "config.yaml").read_text().splitlines()[0]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == \
        list(range(40))


def test_a_run_refused_after_taking_the_lock_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    def bad_data(*args, **kwargs):
        raise UsageError("no images of class 3")

    monkeypatch.setattr(job, "prepare", bad_data)
    out = tmp_path / "new" / "run"
    assert erase_class.main(["3", "--output", str(out), *TINY]) == 2
    assert "no images of class 3" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def _own_cache(tmp_path, monkeypatch) -> Path:
    """A copy of the test session's cache for a test that changes what is cached (a model, a
    score)."""
    home = tmp_path / "home"
    # the trained digits models, made once per test session
    if Path(os.environ["DUALERASE_HOME"]).exists():
        shutil.copytree(os.environ["DUALERASE_HOME"], home)
    monkeypatch.setenv("DUALERASE_HOME", str(home))
    return home


def _kill_when(proc: subprocess.Popen, ready) -> None:
    deadline = time.time() + 600  # a bound on a hang, not a timing target
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_resume_after_the_model_changed_in_place_is_refused_before_any_work(
        tmp_path, monkeypatch, capsys):
    home = _own_cache(tmp_path, monkeypatch)  # this test changes its base model
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli("3", "--output", str(out), *LONG), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "DUALERASE_HOME": str(home)})
    _kill_when(proc, lambda: (out / "checkpoint-5" / "done").exists())
    weights = next((home / "digits").glob("dit-*/diffusion_pytorch_model.safetensors"))
    tensors = load_file(str(weights))
    first = next(iter(tensors))
    # the same files, other weights: what re-saving a model in place does
    tensors[first] = tensors[first] + 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})
    run_files = lambda: {k: v for k, v in folder_snapshot(out).items() if k.name != LOCK}  # noqa: E731
    before = run_files()  # (the killed run's lock is taken over, then released)
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *LONG]) == 2
    err = capsys.readouterr().err
    assert "was erased from model digits/" in err and "changed in place" in err and \
        err.count("\n") == 1, err
    assert run_files() == before


def test_copies_equal_within_the_tolerance_are_tied_and_the_protocol_says_by_how_much(tiny_dit):
    first, second = (block.norm1.emb for block in tiny_dit.transformer_blocks[:2])
    differing = describe_model(tiny_dit)
    with pytest.raises(ModelError, match=r"differ by up to [\d.]+ \(ties within 0\.0001"):
        match_training(tiny_dit, tie=True)  # diffusers-trained copies: independent, far apart
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        # one embedder copied, through a lower precision and back
        next(second.parameters()).add_(1e-7)
    assert embedder_difference(tiny_dit) == pytest.approx(1e-7, rel=0.5)
    match_training(tiny_dit)  # auto: the original DiT's settings, as for bit-equal copies
    described = describe_model(tiny_dit)
    assert embedders_tied(tiny_dit) and described["timestep_shift"] == 0 and \
        described["norm_eps"] == 1e-6
    assert differing["timestep_shift"] == 1  # what the copies' settings were before: diffusers'
    assert "copies differed by up to 1.0e-07" in described["embedders_tied_within"]
    line = protocol_line({"sampler": "DDPM", "steps": 4, "guidance": 1.0, "forget_samples": 1,
                          "retain_samples": 1, "reference": "r", "feature_extractor": "f",
                          "classifier": "c", "seed": 0, **described})
    assert "tied embedders (copies differed by up to 1.0e-07, within the tolerance 0.0001" in line
    # copies again, then 2e-7 apart: true ties them too, saying by how much
    match_training(tiny_dit, tie=False)
    with torch.no_grad():
        next(tiny_dit.transformer_blocks[1].norm1.emb.parameters()).add_(2e-7)
    match_training(tiny_dit, tie=True)
    assert embedders_tied(tiny_dit) and \
        "up to 2.0e-07" in describe_model(tiny_dit)["embedders_tied_within"]


def test_a_1000_class_model_whose_id2label_is_not_in_imagenet_order_is_refused(tmp_path, capsys):
    world = build_world(tmp_path / "world")
    shutil.copytree(world["model"], tmp_path / "permuted")
    index_file = tmp_path / "permuted" / "model_index.json"
    index = json.loads(index_file.read_text())
    labels = index["id2label"]
    # golden retriever named at cockatoo's index
    labels["89"], labels["207"] = labels["207"], labels["89"]
    index_file.write_text(json.dumps(index))
    out = tmp_path / "out"
    args = erase_args(world, out)
    args[args.index("--model") + 1] = str(tmp_path / "permuted")
    assert erase_class.main(args) == 2  # before: erased with cockatoo images and scored as cockatoo
    err = capsys.readouterr().err
    assert "id2label names class 89 'golden retriever', which is ImageNet class 207" in err and \
        "cockatoo" in err
    assert err.count("\n") == 1 and not out.exists()
    # the hub's order passes
    assert erase_class.main(erase_args(world, tmp_path / "in-order", "--dry-run")) == 0


def test_an_undefined_fid_is_null_with_its_reason_not_a_traceback(tmp_path, monkeypatch, capsys):
    # the base model's scores are cached: keep these out of the shared cache
    home = _own_cache(tmp_path, monkeypatch)
    # and measure them here, not read them from earlier tests
    shutil.rmtree(home / "evals", ignore_errors=True)

    # what torch-fidelity raises on inf or NaN statistics
    def overflowing(self, samples, forget_class, classes=None):
        raise np.linalg.LinAlgError("Array must not contain infs or NaNs")

    monkeypatch.setattr(DigitsScorer, "fidelity", overflowing)
    out = tmp_path / "out"
    assert erase_class.main(["3", "--output", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        assert metrics[side]["fid"] is None and \
            "LinAlgError: Array must not contain infs" in metrics[side]["fid_error"]
    assert "FID before: not finite" in capsys.readouterr().out
    assert erase_class.main(["3", "--output", str(tmp_path / "few"), "--set",
                             "eval.retain_samples=1", *TINY]) == 2
    # too few for a covariance: before any work
    assert "eval.retain_samples must be >= 2" in capsys.readouterr().err


def test_an_unwritable_cache_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # sysfs refuses new files even to root, so this holds when tests run as root
    monkeypatch.setenv("DUALERASE_HOME", "/sys/dualerase-cache")
    monkeypatch.setattr(job, "prepare",
                        lambda *a, **k: pytest.fail("started work with an unwritable cache"))
    for command, args in ((erase_class.main, ["3", "--output", str(tmp_path / "run")]),
                          (sample_grid.main, ["--output", str(tmp_path / "grid.png")])):
        assert command([*args, *TINY]) == 2
        err = capsys.readouterr().err
        assert "DUALERASE_HOME (the cache) /sys/dualerase-cache cannot be written" in err and \
            err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_mid_run_is_one_line_naming_the_checkpoint_to_resume_from(
        tmp_path, monkeypatch, capsys):
    real, calls = erasure.save_checkpoint, []

    def filling(output, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 2:  # the second checkpoint finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          str(output / f".checkpoint-{step}.tmp"))
        return real(output, step, *args, **kwargs)

    monkeypatch.setattr(erasure, "save_checkpoint", filling)
    out = tmp_path / "out"
    assert erase_class.main(["3", "--output", str(out), *LONG]) == 1
    err = capsys.readouterr().err
    assert f"No space left on device writing {out}/.checkpoint-10.tmp: free space on that disk, " \
           f"then continue with --resume latest from {out}/checkpoint-5" in err and \
        err.count("\n") == 1, err
    monkeypatch.setattr(erasure, "save_checkpoint", real)
    # nothing lost
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *LONG]) == 0


def test_sample_grid_over_models_of_different_class_counts_is_refused(tmp_path, capsys):
    five = build_dit(num_classes=5, sample_size=8, in_channels=1, patch_size=2, layers=1, heads=2,
                     head_dim=8)
    five.save_pretrained(tmp_path / "five")
    grid = tmp_path / "grid.png"
    assert sample_grid.main(["base", str(tmp_path / "five"), "--output", str(grid), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'five'} has 5 classes but the base model has 10" in err and \
        err.count("\n") == 1
    assert not grid.exists()


def test_a_dry_run_refuses_what_the_real_run_refuses_at_once(tmp_path, capsys):
    world = build_world(tmp_path / "world")
    cases = [(erase_class.main, ["3", "--output", "/sys/dualerase-run", *TINY],
              "--output /sys/dualerase-run cannot be written"),
             (erase_class.main,
              erase_args(world, tmp_path / "a", "--set", "eval.fa_weights=/no/such.safetensors"),
              "eval.fa_weights /no/such.safetensors does not exist"),
             (erase_class.main,
              erase_args(world, tmp_path / "b", "--set", f"eval.fid_reference={tmp_path}"),
              "is not a reference folder"),
             (fid_bench.main, ["--output", "/sys/dualerase-bench", *TINY],
              "--output /sys/dualerase-bench cannot be written")]
    for command, args, needle in cases:
        assert command([*args, "--dry-run"]) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
        # what the real run says, at once
        assert command(args) == 2 and needle in capsys.readouterr().err
    assert erase_class.main(erase_args(world, tmp_path / "c", "--dry-run")) == 0


def test_a_pipeline_with_tied_embedders_saves_in_diffusers_layout(tmp_path):
    pipe = DiTPipeline.from_pretrained(build_pipeline(tmp_path / "dit"))
    first, *rest = (block.norm1.emb for block in pipe.transformer.transformer_blocks)
    # a checkpoint converted from the original DiT: one embedder, copied into every block
    for emb in rest:
        emb.load_state_dict(first.state_dict())
    match_training(pipe)
    assert embedders_tied(pipe.transformer)
    pipe.save_pretrained(tmp_path / "saved")  # before: "Some tensors share memory"
    again = DiTPipeline.from_pretrained(tmp_path / "saved")
    # equal copies
    assert not embedders_tied(again.transformer) and embedder_difference(again.transformer) == 0
    # the tie stays
    assert not changed(again.transformer, pipe.transformer) and embedders_tied(pipe.transformer)
    # a copy saves itself, not the model it was copied from
    copied = copy.deepcopy(pipe.transformer)
    with torch.no_grad():
        copied.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    copied.save_pretrained(tmp_path / "copy")
    assert changed(DiTTransformer2DModel.from_pretrained(tmp_path / "copy"), copied) == []


def test_the_model_cards_loading_call_works_and_says_what_ditpipeline_cannot(tmp_path):
    folder = build_pipeline(tmp_path / "ten", labels=[f"shape {i}" for i in range(10)])
    metrics = json.loads((Path(__file__).parent / "fixtures" / "run-0.1.0" / "finished"
                          / "metrics.json").read_text())
    card = model_card(metrics, pipeline=True, num_classes=10).text
    assert "match_training(DiTPipeline.from_pretrained(folder), folder)" in card
    assert "this 10-class model lacks (its null class is 10): sample it at " \
           "`guidance_scale=1`" in card
    pipe = DiTPipeline.from_pretrained(folder)
    with pytest.raises(IndexError):  # diffusers' null class 1000 is not in a 10-class label table
        pipe([3], num_inference_steps=2, guidance_scale=4.0, output_type="np")
    call = card.split("```python\n")[1].split("```")[0]  # the card's own call, on this folder
    scope = {}
    exec(call.replace("<this folder>", str(folder)).replace("<a class name>", "shape 3")
         .replace("num_inference_steps=250", "num_inference_steps=2"), scope)
    # diffusers-trained copies
    assert len(scope["images"]) == 1 and embedder_difference(scope["pipe"].transformer) > 0
    assert "match_training(DiTTransformer2DModel.from_pretrained(folder), folder)" in \
        model_card(metrics, pipeline=False, num_classes=10).text


def test_aggregate_with_no_finished_cell_says_none_has_run(tmp_path, capsys):
    assert fid_bench.main(["--methods", "ga", "--optimizers", "dual", "--output",
                           str(tmp_path / "bench"), "--aggregate", *TINY]) == 1
    err = capsys.readouterr().err
    assert "no cell of this benchmark has finished" in err and "diverged" not in err and \
        err.count("\n") == 1


def test_a_data_folder_matching_a_repeated_class_name_names_the_repeat(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    with pytest.raises(UsageError, match=r"classes 0 \('cat'\) and 2 \('cat'\) the same name"):
        scan(tmp_path, Classes(names=["cat", "dog", "cat"]))


def test_a_model_saved_only_as_a_variant_names_the_files_and_the_setting(tmp_path, capsys):
    folder = build_pipeline(tmp_path / "dit")
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer",
                                                        torch_dtype=torch.float16)
    transformer.save_pretrained(folder / "transformer", variant="fp16")
    # as a hub repo of fp16 weights only
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    args = ["--model", str(folder), "--classes", "0", "--per-class", "1", "--set", "sample.steps=2",
            "--quiet"]
    assert sample_grid.main([*args, "--output", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "holds its weights only as the variant(s) fp16 " \
           "(diffusion_pytorch_model.fp16.safetensors): pass --set model.variant=fp16" in err and \
        err.count("\n") == 1, err
    assert sample_grid.main([*args, "--output", str(tmp_path / "b.png"), "--set",
                             "model.variant=fp16"]) == 0
    assert (tmp_path / "b.png").exists()


def test_ctrl_c_is_one_line_with_the_command_that_continues(tmp_path, monkeypatch, capsys):
    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    args = ["3", "--output", str(out), *TINY]
    real = job.erase
    monkeypatch.setattr(job, "erase", pressed)  # Ctrl-C during erasure
    assert erase_class.main(args) == 130
    err = capsys.readouterr().err
    again = shlex.join(["erase-class", *args, "--resume", "latest"])
    assert err == f"erase-class: interrupted: continue with `{again}`\n"
    monkeypatch.setattr(job, "erase", real)
    assert erase_class.main([*shlex.split(err.split("`")[1])[1:]]) == 0 and \
        (out / "metrics.json").exists()
