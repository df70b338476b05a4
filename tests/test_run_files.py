"""A damaged file in an unfinished run folder, and a real full disk: each is one line that names the
file (or the disk) and what to do, a damaged older checkpoint or cached file is passed over or made
again, and a failed write leaves no temporary file behind."""
import shutil
import subprocess

import pytest
import torch
from conftest import TINY, changed, shared_cache
from safetensors.torch import load_file

from dualerase.cli import erase_class
from dualerase.runs import job
from dualerase.runs.checkpoint import PartialSums, disk_full

STEPS = TINY + ["--set", "erase.outer_steps=10", "--set", "erase.checkpoint_every=3"]
WEIGHTS = "model/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped (Ctrl-C) after its erasure and its samples, before its grid: it holds
    erase.json, model/, log.jsonl, checkpoint-6 and checkpoint-9, samples-after/ and no metrics."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    mp = pytest.MonkeyPatch()  # module scope: the autouse cache fixture has not run yet
    mp.setenv("DUALERASE_HOME", str(shared_cache(tmp_path_factory)))
    mp.setattr(job, "_grid", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    code = erase_class.main(["3", "--output", str(out), *STEPS])
    mp.undo()
    assert code == 130
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-9"]
    return out


@pytest.fixture
def erased(stopped, tmp_path):
    """A copy of the stopped run: erasure finished."""
    return shutil.copytree(stopped, tmp_path / "out")


@pytest.fixture
def checkpointed(erased):
    """A copy of the stopped run as it was at the end of its erasure, before the model was saved."""
    for name in ("model", "samples-after", "samples"):
        shutil.rmtree(erased / name)
    (erased / "erase.json").unlink()
    return erased


def resume(out, checkpoint="latest"):
    return erase_class.main(["3", "--output", str(out), *STEPS, "--resume", str(checkpoint)])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def cut(path, keep=0.5) -> None:
    """Truncate the file at `path` to `keep` of its length."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("text", ["", "seed: [0\n", "- a\n- list\n"])
def test_a_damaged_config_yaml_is_one_line(checkpointed, text, capsys):
    (checkpointed / "config.yaml").write_text(text)
    assert resume(checkpointed) == 2
    err = one_line(capsys)
    assert f"{checkpointed / 'config.yaml'} is damaged" in err and "--overwrite" in err, err


def test_an_empty_metrics_json_is_one_line(erased, capsys):
    (erased / "metrics.json").write_text("")
    assert resume(erased) == 2
    err = one_line(capsys)
    assert f"{erased / 'metrics.json'} is damaged" in err and "delete it" in err, err


@pytest.mark.parametrize("damage", ["erase.json", WEIGHTS, "log.jsonl"])
def test_a_damaged_file_of_a_finished_erasure_is_one_line(erased, damage, capsys):
    if damage == "erase.json":
        (erased / damage).write_bytes(b"\x00garbage{")
    else:
        cut(erased / damage, 0.98)  # the log: its last line cut short
    assert resume(erased) == 2
    err = one_line(capsys)
    assert f"{erased / damage} is " in err and f"delete {erased / 'erase.json'}" in err, err


@pytest.mark.parametrize("damage", ["model.safetensors", "state.pt"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_older_one(checkpointed, stopped, damage,
                                                                 capsys):
    cut(checkpointed / "checkpoint-9" / damage)
    cut(checkpointed / "log.jsonl", 0.98)  # a line cut short after the steps resumed: dropped
    assert resume(checkpointed) == 0
    err = one_line(capsys)
    assert f"--resume latest: {checkpointed / 'checkpoint-9' / damage} is damaged" in err, err
    assert f"resuming from {checkpointed / 'checkpoint-6'} instead" in err, err
    assert not changed(load_file(str(checkpointed / WEIGHTS)), load_file(str(stopped / WEIGHTS)))
    assert (checkpointed / "log.jsonl").read_text() == (stopped / "log.jsonl").read_text()


def test_every_checkpoint_damaged_is_one_line(checkpointed, capsys):
    for step in (6, 9):
        cut(checkpointed / f"checkpoint-{step}" / "state.pt")
    assert resume(checkpointed) == 2
    err = one_line(capsys)
    assert f"{checkpointed / 'checkpoint-9' / 'state.pt'} is damaged" in err, err
    assert "no older checkpoint is intact" in err and "--overwrite" in err, err


def test_resuming_a_named_damaged_checkpoint_is_one_line(checkpointed, capsys):
    cut(checkpointed / "checkpoint-9" / "model.safetensors")
    assert resume(checkpointed, checkpointed / "checkpoint-9") == 2
    err = one_line(capsys)
    assert f"{checkpointed / 'checkpoint-9' / 'model.safetensors'} is damaged" in err, err
    assert "--resume latest" in err


def test_a_log_cut_within_the_resumed_steps_is_one_line_naming_an_older_checkpoint(checkpointed,
                                                                                   capsys):
    log = checkpointed / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:7]) + lines[7][:20])  # 7 whole records; checkpoint-9 needs 9
    assert resume(checkpointed) == 2
    err = one_line(capsys)
    assert f"{log} holds 7 whole records" in err, err
    assert f"--resume {checkpointed / 'checkpoint-6'}" in err, err


def test_a_damaged_prepared_file_is_made_again(checkpointed, stopped, capsys):
    cut(checkpointed / "prepared.safetensors")  # a copy: the cache's own is intact
    assert resume(checkpointed) == 0
    err = one_line(capsys)
    assert f"{checkpointed / 'prepared.safetensors'} is damaged" in err and "again" in err, err
    assert not changed(load_file(str(checkpointed / WEIGHTS)), load_file(str(stopped / WEIGHTS)))


def test_a_damaged_sample_batch_is_drawn_again(erased, stopped, capsys):
    batch = sorted((erased / "samples-after").glob("batch-*.pt"))[0]
    cut(batch)
    assert resume(erased) == 0
    err = one_line(capsys)
    assert f"{batch} is damaged" in err and "again" in err, err
    original = stopped / batch.relative_to(erased)
    assert torch.equal(torch.load(batch), torch.load(original))
    assert (erased / "metrics.json").exists()


def test_a_damaged_partial_sum_is_summed_from_the_start(tmp_path, capsys):
    partial = PartialSums(tmp_path)
    partial.save("fisher", 5, {"w": torch.ones(1000)})
    cut(tmp_path / "fisher-0of1.safetensors")
    assert partial.load("fisher") is None
    err = one_line(capsys)
    assert f"{tmp_path / 'fisher-0of1.safetensors'} is damaged" in err, err


# --- a real full disk ---


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs, mounted for the test and unmounted after it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except OSError as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: even with a file open


# sfron: its preparation (3.5 MB) is copied from the roomy cache onto the output's disk (an
# OSError naming the cache's file); ga: nothing to prepare, the first checkpoint's torch.save fills
# the disk (a RuntimeError), or with 2 MiB taken its safetensors weights do (a SafetensorError)
@pytest.mark.parametrize("method,taken", [("sfron", 0), ("ga", 0), ("ga", 2)],
                         ids=["copy", "torch.save", "safetensors"])
def test_a_real_full_disk_is_one_line_naming_it_and_leaves_no_temporary_file(small_disk, method,
                                                                              taken, capsys):
    (small_disk / "taken").write_bytes(bytes(taken << 20))
    out = small_disk / "out"
    assert erase_class.main(["3", "--method", method, "--output", str(out), *STEPS]) == 1
    err = one_line(capsys)
    assert err.startswith(f"erase-class: error: No space left on device writing {out}/"), err
    assert "free space on that disk, then continue with --resume latest" in err, err
    assert [p for p in small_disk.rglob("*") if ".tmp" in p.name] == []


def test_any_error_on_a_nearly_full_disk_counts_as_a_full_disk(small_disk, tmp_path):
    with pytest.raises(OSError), open(small_disk / "filler", "wb") as f:
        while True:
            f.write(bytes(1 << 16))
            f.flush()
    # torch.save's complaint about a short write
    message = disk_full(RuntimeError("unexpected pos 1520128 vs 1520080"), small_disk)
    assert message.startswith(f"No space left on device writing {small_disk}: "), message
    assert disk_full(RuntimeError("unexpected pos"), tmp_path) is None  # a roomy disk: not one


def test_any_other_error_is_still_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(job, "run_trials", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError, match="^x$"):
        erase_class.main(["3", "--output", str(tmp_path / "out"), *TINY])
