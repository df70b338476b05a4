"""Nothing lost, nothing confusing: kills and resumes, the divergence guard, bad input,
determinism."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, changed, folder_snapshot, mtimes, shared_cache
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from dualerase.cli import erase_class, fid_bench, sample_grid
from dualerase.config import load_config
from dualerase.errors import ConfigError
from dualerase.unlearn.methods.ga import GradientAscent

LONG = TINY + ["--set", "erase.outer_steps=40", "--set", "erase.checkpoint_every=5", "--set",
               "sample.batch_size=20", "--set", "eval.forget_samples=60", "--set",
               "sample.steps=20"]


def _cli(*args):
    return [sys.executable, "-c",
            "import sys; from dualerase.cli.erase_class import main; sys.exit(main())", *args]


def _run_until(args, ready):
    """Start erase-class in a subprocess and SIGKILL it as soon as `ready()` holds: no clock,
    however slow the machine (a run that ends first fails the test)."""
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not ready():
        assert proc.poll() is None, \
            f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and a second identical one (determinism)."""
    outs = [tmp_path_factory.mktemp("ref") / "out", tmp_path_factory.mktemp("ref2") / "out"]
    for out in outs:
        subprocess.run(_cli("3", "--output", str(out), *LONG), check=True,
                       stdout=subprocess.DEVNULL,
                       env={**os.environ, "DUALERASE_HOME": str(shared_cache(tmp_path_factory))})
    return outs


def _weights(out: Path):
    return load_file(str(out / "model" / "diffusion_pytorch_model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert not changed(wb, wa)


def test_same_command_same_seed_same_weights_and_metrics(reference):
    a, b = reference
    _assert_same_weights(a, b)
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (a, b))
    assert ma["after"] == mb["after"]
    assert ma["before"] == mb["before"]


def test_sigkill_during_erasure_then_resume_matches_uninterrupted(reference, tmp_path):
    out = tmp_path / "out"
    _run_until(["3", "--output", str(out), *LONG], lambda: _lines(out / "log.jsonl") >= 17)
    assert not (out / "metrics.json").exists()
    assert erase_class.main(["3", "--output", str(out), *LONG]) == 2  # unfinished: needs --resume
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *LONG]) == 0
    _assert_same_weights(out, reference[0])
    log = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == list(range(40))
    assert json.loads((out / "metrics.json").read_text())["after"] == \
        json.loads((reference[0] / "metrics.json").read_text())["after"]


def test_sigkill_during_sampling_then_resume_has_every_sample_once(reference, tmp_path):
    out = tmp_path / "out"
    samples = out / "samples-after"
    _run_until(["3", "--output", str(out), *LONG],
               lambda: len(list(samples.glob("batch-*.pt"))) >= 2)
    kept = mtimes(samples, "batch-*.pt")
    assert erase_class.main(["3", "--output", str(out), "--resume", "latest", *LONG]) == 0
    for name, stamp in kept.items():  # finished sample batches were reused, not redrawn
        assert (samples / name).stat().st_mtime_ns == stamp
    spans = sorted((int(p.name.split("-")[1]), int(p.name.split("-")[2][:-3]))
                   for p in samples.glob("batch-*.pt"))
    covered = [i for start, n in spans for i in range(start, start + n)]
    # forget samples then 10 per retained class: no gap, no duplicate
    assert covered == list(range(60 + 90))
    _assert_same_weights(out, reference[0])
    assert json.loads((out / "metrics.json").read_text())["after"] == \
        json.loads((reference[0] / "metrics.json").read_text())["after"]


def test_nan_forget_loss_stops_with_step_and_side_and_keeps_last_checkpoint(
        monkeypatch, tmp_path, capsys):
    calls = {"n": 0}
    original = GradientAscent.forget_loss

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss = original(self, model, batch)
        return loss * float("nan") if calls["n"] == 13 else loss

    monkeypatch.setattr(GradientAscent, "forget_loss", poisoned)
    out = tmp_path / "out"
    assert erase_class.main(["3", "--output", str(out), *LONG]) == 1
    err = capsys.readouterr().err.strip()
    assert "forget step at outer step 12" in err
    assert "checkpoint-10" in err
    assert "\n" not in err
    assert not (out / "metrics.json").exists()
    assert not (out / "model").exists()
    assert (out / "checkpoint-10" / "model.safetensors").exists()
    assert all(v.isfinite().all()
               for v in load_file(str(out / "checkpoint-10" / "model.safetensors")).values())


def test_overwrite_never_deletes_a_folder_that_holds_no_run(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert erase_class.main(["3", "--overwrite", "--output", str(tmp_path), *TINY]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def finished(tiny_run):
    code, out = tiny_run
    assert code == 0
    return out


BAD = [
    (erase_class.main, ["12"], "out of range"),
    (erase_class.main, ["-1"], "out of range"),
    (erase_class.main, ["seven"], "unknown class"),
    (erase_class.main, ["3", "--set", "erase.outerstep=5"], "did you mean erase.outer_steps"),
    (erase_class.main, ["3", "--config", "digitts"], "did you mean digits"),
    (erase_class.main, ["3", "--set", "erase.outer_steps=-5"], "erase.outer_steps must be > 0"),
    (erase_class.main, ["3", "--set", "erase.forget_lr=0"], "erase.forget_lr must be > 0"),
    (erase_class.main, ["3", "--set", "erase.retain_lr=-1e-4"], "erase.retain_lr must be > 0"),
    (erase_class.main, ["3", "--set", "method.gamma=-1"], "method.gamma must be >= 0"),
    (erase_class.main, ["3", "--config", "imagenet", "--set", "eval.fa_real_distance=4.5"],
     "eval.fa_real_distance needs the digits' real images"),
    (erase_class.main, ["3", "--set", "sample.guidance=-2"], "sample.guidance must be >= 0"),
    (erase_class.main, ["3", "--set", "eval.forget_samples=0"], "eval.forget_samples must be > 0"),
    (erase_class.main, ["3", "--set", "erase.batch_size=big"], "erase.batch_size must be int"),
    (erase_class.main, ["3", "--trials", "x"], "--trials"),
    (erase_class.main, ["3", "--set", "erase.forget_clip=-1"], "erase.forget_clip must be > 0"),
    (erase_class.main, ["3", "--set", "eval.grid_per_class=0"], "eval.grid_per_class must be > 0"),
    (erase_class.main, ["3", "--set", "digits.patch_size=3"], "digits.patch_size must divide"),
    (erase_class.main, ["3", "--set", "erase.forget_lr=.inf"], "must be a finite number"),
    (erase_class.main, ["3", "--method", "salun", "--set", "method.pseudo_class=3"],
     "other than 3"),
    (erase_class.main, ["3", "--overwrite", "--resume"], "contradict"),
    (erase_class.main, ["3"], "already holds a finished run"),
    (sample_grid.main, ["--mark", "11"], "out of range"),
    (sample_grid.main, ["no/such/folder"], "neither 'base'"),
    (sample_grid.main, ["--config", "nope"], "unknown preset"),
    (sample_grid.main, ["--per-class", "0"], "--per-class"),
    (fid_bench.main, ["--methods", "salun", "sfrn"], "method.name = 'sfrn' is not valid"),
    (fid_bench.main, ["--classes", "10"], "out of range"),
    (fid_bench.main, ["nospec"], "unknown benchmark spec"),
    # an output that cannot be written (sysfs refuses new files even to root, so this holds when
    # tests run as root)
    (erase_class.main, ["3", "--output", "/sys/dualerase-run"],
     "--output /sys/dualerase-run cannot be written"),
    (sample_grid.main, ["--output", "/sys/grid.png"], "--output /sys/grid.png cannot be written"),
    (fid_bench.main, ["--output", "/sys/bench"], "--output /sys/bench cannot be written"),
]


@pytest.mark.parametrize("command,args,needle", BAD,
                         ids=[f"{c.__module__.split('.')[-1]}:{' '.join(a)}" for c, a, _ in BAD])
def test_bad_input_one_line_exit_2_output_untouched(command, args, needle, finished, capsys):
    before = folder_snapshot(finished)
    target = ["--output", str(finished / "grid.png" if command is sample_grid.main else finished)]
    assert command(TINY + target + args) == 2  # the bad value comes last, so it wins
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert "\n" not in err
    assert "Traceback" not in err
    assert folder_snapshot(finished) == before


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=0, max_size=30), value=st.text(max_size=20), cls=st.text(max_size=12))
def test_random_overrides_and_classes_never_raise_a_traceback(key, value, cls, finished, capsys):
    item = f"{key}={value}"
    try:
        load_config("digits", [item])
    except ConfigError as e:
        assert "\n" not in str(e)
    # after "--": a class such as "-h" is a class, not an option
    code = erase_class.main(["--set", item, "--output", str(finished), "--quiet", "--", cls or "3"])
    assert code == 2  # a bad key or value, or else the finished run in --output: never a traceback
    err = capsys.readouterr().err.strip()
    assert err.startswith("erase-class: error:")
    assert "\n" not in err


def test_a_usage_error_under_a_launcher_is_printed_once(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{root / 'tests'}:{root}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29523", "-m", "dualerase.cli.erase_class", "seven", "--output", str(tmp_path / "out"),
           "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "out").exists()
    assert proc.stderr.count("erase-class: error: unknown class 'seven'") == 1, proc.stderr[-3000:]
    # torchrun's own report: the silent process failed with the same status
    assert "exitcode  : 2" in proc.stderr
