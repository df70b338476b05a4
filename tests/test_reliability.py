"""A diverged run, a damaged run folder, a full disk, a dead job's claim and the API's global state:
each ends in one line and loses nothing."""
import json

import pytest
from conftest import TINY

from dualerase.cli import erase_class, fid_bench

METHODS = ("ga", "sfron", "salun", "sa")


@pytest.mark.parametrize("side", ("forget", "retain"))
@pytest.mark.parametrize("method", METHODS)
def test_a_learning_rate_that_blows_up_the_weights_is_one_diverged_line(method, side, tmp_path,
                                                                        capsys):
    # a huge unclipped step makes the weights non-finite; before the check named it, the next
    # step's variance term raised a ValueError from its Normal's argument check (a traceback)
    out = tmp_path / "out"
    code = erase_class.main(["3", "--method", method, "--output", str(out), *TINY,
                             "--set", f"erase.{side}_lr=1e4", "--set", f"erase.{side}_clip=null"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert "\n" not in err and "Traceback" not in err
    assert f"erasure diverged at the {side} step at outer step 0" in err, err
    assert f"lower erase.{side}_lr" in err
    assert not (out / "metrics.json").exists() and not (out / "model").exists()


def test_a_diverged_shared_optimizer_run_names_the_shared_rate(tmp_path, capsys):
    out = tmp_path / "out"
    code = erase_class.main(["3", "--output", str(out), *TINY, "--set", "erase.optimizer=shared",
                             "--set", "erase.shared_lr=1e4", "--set", "erase.forget_clip=null"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert "lower erase.shared_lr" in err and "erase.forget_lr" not in err


def test_fid_bench_records_a_diverged_cell_and_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--methods", "ga", "--classes", "3", "--optimizers", "dual", "shared", "--seeds", "0",
            "--output", str(out), *TINY, "--set", "erase.shared_lr=1e4",
            "--set", "erase.forget_clip=null"]
    assert fid_bench.main(args) == 0, capsys.readouterr().err
    cells = sorted(p.parent.name for p in out.glob("*/*/diverged.txt"))
    assert len(cells) == 1 and "shared" in cells[0]
    table = (out / "results.md").read_text()
    assert "Diverged cells" in table and "erasure diverged at the forget step" in table
    assert json.loads((out / "results.json").read_text())["rows"]


def test_fid_bench_records_a_cell_that_fails_otherwise_and_goes_on(tmp_path, monkeypatch,
                                                                   capsys):
    import dualerase.bench.bench as bench

    real = bench.run

    def run(cfg, cls, out, **kwargs):
        if cfg.erase.optimizer == "shared":
            raise ValueError("Expected parameter loc of Normal to satisfy the constraint Real()")
        return real(cfg, cls, out, **kwargs)

    monkeypatch.setattr(bench, "run", run)
    out = tmp_path / "bench"
    args = ["--methods", "ga", "--classes", "3", "--optimizers", "shared", "dual", "--seeds", "0",
            "--output", str(out), *TINY]
    assert fid_bench.main(args) == 0  # the failed cell came first; the other still ran
    err = capsys.readouterr().err
    assert "failed (ValueError: Expected parameter loc" in err and "going on" in err
    failed = list(out.glob("*/*/failed.txt"))
    assert len(failed) == 1 and "Traceback" in failed[0].read_text()
    assert len(list(out.glob("*/*/metrics.json"))) == 1
    table = (out / "results.md").read_text()
    assert "Failed cells" in table and "ValueError: Expected parameter loc" in table
    assert fid_bench.main(args) == 0  # a rerun reports the same, without running the cell again
    assert "Failed cells" in capsys.readouterr().out
    # its record keeps the reason, not the traceback with this machine's paths
    import shutil

    from dualerase.bench.records import pack, unpack

    done = next(out.glob("*/*/metrics.json")).parent  # as if the cell had failed mid-run
    shutil.copy(done / "config.yaml", failed[0].parent / "config.yaml")
    assert pack(out, tmp_path / "records", "digits") == 2
    lines = [json.loads(x) for x in (tmp_path / "records" / "cells.jsonl").read_text().splitlines()]
    (reason,) = [x["failed"] for x in lines if "failed" in x]
    assert reason.startswith("ValueError: Expected parameter loc") and str(tmp_path) not in reason
    assert unpack(tmp_path / "records", tmp_path / "again") == 2
    assert [p.read_text() for p in (tmp_path / "again").glob("*/*/failed.txt")] == [reason]


def test_a_job_takes_over_the_claim_of_a_sibling_that_died_after_it_passed_and_writes_tables(
        tmp_path, monkeypatch, capsys):
    import socket
    import subprocess
    import sys

    import dualerase.bench.bench as bench
    from dualerase.bench.cells import plan

    out = tmp_path / "bench"
    choice = dict(classes=["3"], methods=["ga"], optimizers=["dual", "shared"], seeds=[0])
    first = plan("digits", **choice, overrides=[s for s in TINY if s not in ("--set", "--quiet")])
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    claims = out / "claims"
    claims.mkdir(parents=True)
    # the sibling job holds the first cell while this job passes it, and dies during the second
    (claims / first.cells[0].folder(out).name).write_text(f"{socket.gethostname()} {sibling.pid}")
    real = bench.run

    def run(cfg, cls, folder, **kwargs):
        if sibling.poll() is None:
            sibling.kill()
            sibling.wait()
        return real(cfg, cls, folder, **kwargs)

    monkeypatch.setattr(bench, "run", run)
    args = ["--methods", "ga", "--classes", "3", "--optimizers", "dual", "shared", "--seeds", "0",
            "--output", str(out), *TINY]
    try:
        assert fid_bench.main(args) == 0
    finally:
        sibling.kill()
    assert len(list(out.glob("cells/*/metrics.json"))) == 2
    assert (out / "results.md").exists(), capsys.readouterr().err
