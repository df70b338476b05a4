"""A fair comparison (bench/tuning.py, reports/sensitivity.py): tuning, the rule, the sweep.

Per-method tuning on seeds of its own, the rule that picks each pair's operating point, and the
sensitivity sweep."""
import shutil
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import SETS

from dualerase.bench import tuning
from dualerase.cli import fid_bench
from dualerase.reports import sensitivity


def _cell(method, optimizer, setting, seed, fa, retain, fid, base_retain=0.95):
    return {"method": method, "optimizer": optimizer, "setting": setting, "seed": seed,
            "forget_class": 3, "before": {"retain_accuracy": base_retain},
            "after": {"forget_accuracy": fa, "retain_accuracy": retain, "fid": fid}}


def test_the_rule_picks_the_lowest_fid_that_forgets_and_keeps_the_rest_else_the_lowest_fa():
    lr = [["erase.forget_lr=1e-4"], ["erase.forget_lr=2e-4"], ["erase.forget_lr=4e-4"],
          ["erase.forget_lr=8e-4"]]
    cells = [  # two tuning seeds per setting; the means decide
        # forgets too little
        *[_cell("ga", "dual", lr[0], s, 0.30, 0.95, 4.0) for s in (100, 101)],
        _cell("ga", "dual", lr[1], 100, 0.02, 0.94, 5.0),  # FA 0.04
        _cell("ga", "dual", lr[1], 101, 0.06, 0.94, 5.4),
        # retain drop 0.05: out
        *[_cell("ga", "dual", lr[2], s, 0.00, 0.90, 4.5) for s in (100, 101)],
        # meets both, higher FID
        *[_cell("ga", "dual", lr[3], s, 0.01, 0.93, 6.0) for s in (100, 101)],
        # shared: no setting meets FA <= 0.05: the lowest FA, then the lowest FID
        *[_cell("ga", "shared", lr[0], s, 0.40, 0.95, 4.0) for s in (100, 101)],
        *[_cell("ga", "shared", lr[1], s, 0.20, 0.95, 9.0) for s in (100, 101)],
        *[_cell("ga", "shared", lr[2], s, 0.20, 0.95, 7.0) for s in (100, 101)]]
    chosen = tuning.select(cells, fa_target=0.05, retain_drop=0.03)
    assert (chosen["ga", "dual"]["setting"] == lr[1]
            and chosen["ga", "dual"]["fa"] == pytest.approx(0.04))
    assert chosen["ga", "dual"]["rule"].startswith("lowest FID with FA <= 0.05")
    assert (chosen["ga", "shared"]["setting"] == lr[2]
            and "lowest FA" in chosen["ga", "shared"]["rule"])


def _spec(tmp_path, **extra) -> str:
    spec = {"config": "digits", "methods": ["ga"], "optimizers": ["dual"], "classes": ["3"],
            "seeds": [0], "set": SETS, **extra}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_tuning_runs_on_its_own_seeds_and_the_report_uses_the_chosen_setting(
        tmp_path, monkeypatch, capsys):
    """The rule sees the tuning cells only; the reporting cells run at the setting it chose.

    The tuning cells are seed 100, never the reporting seed 0; the chosen setting is written as a
    config `--config` reads, and the reporting cells run at it and say so in the table."""
    seen = []
    select = tuning.select

    def spy(cells, *args):
        seen.extend(m["seed"] for m in cells)
        return select(cells, *args)

    monkeypatch.setattr("dualerase.bench.bench.select", spy)
    tune = {"seeds": [100], "grid": {"ga": {"dual": {"erase.forget_lr": [1e-4, 1e-3]}}},
            "set": ["sample.steps=3"]}
    out = tmp_path / "bench"
    assert fid_bench.main([_spec(tmp_path, tune=tune, seeds=[1, 0]), "--output", str(out),
                           "--quiet"]) == 0
    assert seen == [100, 100]
    assert sorted(p.name for p in (out / "tune" / "cells").iterdir()) == [
        "ga-dual-3-s100-forget_lr0.0001", "ga-dual-3-s100-forget_lr0.001"]
    preset = (out / "tuned" / "ga-dual.yaml").read_text()
    chosen = yaml.safe_load(preset)["erase"]["forget_lr"]
    assert chosen in (1e-4, 1e-3) and preset.startswith(
        "# ga / dual, tuned by fid-bench on seeds [100]")
    # the reporting protocol, not the tuning one
    assert yaml.safe_load(preset)["sample"]["steps"] == 4
    assert yaml.safe_load(preset)["seed"] == 1  # the first reporting seed, not the last cell's
    assert f"| ga (erase.forget_lr={chosen}) | dual | 3 |" in (out / "results.md").read_text()
    bad = _spec(tmp_path, tune={**tune, "seeds": [0]})
    assert fid_bench.main([bad, "--output", str(tmp_path / "never"), "--quiet"]) == 2
    assert "tuning seeds must never be reporting seeds" in capsys.readouterr().err


def test_a_job_done_with_its_tuning_cells_waits_for_another_jobs_then_takes_its_share_of_the_report(
        tmp_path, monkeypatch, capsys):
    """Two jobs over one folder: the one left waiting on a tuning cell then shares the report.

    The job that finds the last tuning cell running in the other job waits for it, then runs
    reporting cells, rather than exiting and leaving the whole report to the other job."""
    tune = {"seeds": [100], "grid": {"ga": {"dual": {"erase.forget_lr": [1e-4, 1e-3]}}}}
    spec = _spec(tmp_path, tune=tune)
    alone = tmp_path / "alone"
    assert fid_bench.main([spec, "--output", str(alone), "--quiet"]) == 0
    shared, (*done, last) = tmp_path / "shared", sorted((alone / "tune" / "cells").iterdir())
    for cell in done:
        shutil.copytree(cell, shared / "tune" / "cells" / cell.name)
    # the other job: holds the last tuning cell's claim and finishes the cell after 2 s (its record
    # moved in whole)
    finish = "import os, shutil, sys, time; time.sleep(2); " \
             "shutil.copytree(sys.argv[1], sys.argv[2] + '.tmp'); " \
             "os.rename(sys.argv[2] + '.tmp', sys.argv[2])"
    other = subprocess.Popen([sys.executable, "-c", finish, str(last),
                              str(shared / "tune" / "cells" / last.name)])
    (shared / "tune" / "claims").mkdir(parents=True)
    (shared / "tune" / "claims" / last.name).write_text(f"{socket.gethostname()} {other.pid}")
    monkeypatch.setattr("dualerase.bench.bench.TUNING_POLL_S", 0.2)
    capsys.readouterr()
    try:
        assert fid_bench.main([spec, "--output", str(shared), "--quiet"]) == 0
    finally:
        other.wait()
    err = capsys.readouterr().err
    assert ("waiting for 1 tuning cell(s) other jobs run" in err
            and "left to other jobs" not in err)
    started = [line.split(": ", 2)[2] for line in err.splitlines()
               if line.startswith("fid-bench: cell ")]
    assert len(started) == 1 and "seed 0" in started[0]  # the reporting cell, no tuning cell
    assert ((shared / "tuned" / "ga-dual.yaml").read_text()
            == (alone / "tuned" / "ga-dual.yaml").read_text())
    assert (shared / "results.md").exists()


def test_a_sweep_runs_every_value_and_draws_the_sensitivity_figure(tmp_path):
    out = tmp_path / "sweep"
    sweep = {"key": {"dual": "erase.forget_lr", "shared": "erase.shared_lr"},
             "values": [1e-4, 1e-3]}
    spec = _spec(tmp_path, sweep=sweep, optimizers=["dual", "shared"])
    assert fid_bench.main([spec, "--output", str(out), "--quiet"]) == 0
    table = (out / "results.md").read_text()
    # the dual cells at each forget lr, the shared ones at each shared lr
    for lr in ("0.0001", "0.001"):
        assert f"| ga (erase.forget_lr={lr}) | dual | 3 |" in table
        assert f"| ga (erase.shared_lr={lr}) | shared | 3 |" in table
    assert (out / "sensitivity.png").stat().st_size and not (out / "forget_loss.png").exists()


def test_a_sensitivity_curve_averages_classes_then_seeds_and_counts_the_diverged_cells():
    lr = [["erase.forget_lr=1e-4"], ["erase.forget_lr=1e-3"]]
    cells = [_cell("ga", "dual", lr[0], 0, 0.2, 0.9, 4.0),
             {**_cell("ga", "dual", lr[0], 0, 0.4, 0.9, 6.0), "forget_class": 7},
             _cell("ga", "dual", lr[0], 1, 0.0, 0.9, 8.0),
             _cell("ga", "dual", lr[1], 0, 0.0, 0.5, 90.0),
             _cell("ga", "shared", lr[0], 0, 0.9, 0.9, 3.0)]  # another mode: not this curve
    diverged = [{"method": "ga", "optimizer": "dual", "seed": s, "setting": lr[1]} for s in (1, 2)]
    curve = sensitivity.sensitivity_series(cells, diverged, "ga", "dual", "fid")
    # seed 0 at 1e-4: classes 3 and 7 average to 5.0; seed 1: 8.0; mean 6.5, sample std of (5, 8)
    assert curve["values"] == [1e-4, 1e-3] and curve["mean"] == pytest.approx([6.5, 90.0])
    assert (curve["std"] == pytest.approx([2.1213203, 0.0]) and curve["diverged"] == [0, 2]
            and curve["runs"] == [3, 3])
    only_diverged = sensitivity.sensitivity_series([], diverged, "ga", "dual", "fid")
    assert only_diverged["mean"] == [None] and only_diverged["diverged"] == [2]
