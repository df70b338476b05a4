"""fid-bench as several jobs over one output folder: claims, shards, the tables of the last job."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY

from dualerase.cli import fid_bench
from dualerase.integrations.claims import claim

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--methods", "ga", "--optimizers", "dual", "--classes", "3", "0", "--seeds", "0", "1",
        *TINY]


def _table(folder: Path) -> str:
    """results.md without its command line (the output folders differ)."""
    return "\n".join(line for line in (folder / "results.md").read_text().splitlines()
                     if not line.startswith("Command:"))


def test_two_jobs_at_once_run_every_cell_once_and_give_the_table_of_one(tmp_path):
    # the two jobs share 2 cores; the protocol names the count
    one_thread = [*GRID, "--set", "compute.threads=1"]
    threads = torch.get_num_threads()
    try:
        # also warms the digits cache
        assert fid_bench.main([*one_thread, "--output", str(tmp_path / "one")]) == 0
    finally:
        # compute.threads set this process's count: the other tests keep theirs
        torch.set_num_threads(threads)
    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dualerase.cli.fid_bench", *one_thread, "--output", str(shared)]
    jobs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True) for _ in range(2)]
    errs = [job.communicate(timeout=900)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errs
    started = [line for err in errs for line in err.splitlines()
               if line.startswith("fid-bench: cell ")]
    # each cell once, by one job
    assert sorted(line.split(": ", 2)[2] for line in started) == sorted(
        f"ga / dual / class {c} / seed {s}" for c in ("3", "0") for s in (0, 1))
    assert _table(shared) == _table(tmp_path / "one")


def test_shards_split_the_grid_and_aggregate_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bench"
    assert fid_bench.main([*GRID, "--output", str(out), "--shard", "0/2"]) == 0
    assert ("left to other jobs" in capsys.readouterr().err
            and not (out / "results.md").exists())
    assert sorted(p.parent.name for p in (out / "cells").glob("*/metrics.json")) == [
        "ga-dual-0-s0", "ga-dual-3-s0"]
    assert fid_bench.main([*GRID, "--output", str(out), "--aggregate"]) == 0
    assert ("Not finished when these tables were written: 2 cell(s)"
            in (out / "results.md").read_text())
    # the last shard writes the tables
    assert fid_bench.main([*GRID, "--output", str(out), "--shard", "1/2"]) == 0
    assert "Not finished" not in (out / "results.md").read_text()
    assert fid_bench.main([*GRID, "--output", str(out), "--shard", "2/2"]) == 2
    # a cell's record alone (metrics.json, config.yaml, log.jsonl), carried to another folder,
    # counts as finished
    carried = tmp_path / "carried"
    for cell in (out / "cells").iterdir():
        (carried / "cells" / cell.name).mkdir(parents=True)
        for name in ("metrics.json", "config.yaml", "log.jsonl"):
            (carried / "cells" / cell.name / name).write_bytes((cell / name).read_bytes())
    capsys.readouterr()
    assert fid_bench.main([*GRID, "--output", str(carried)]) == 0
    assert "fid-bench: cell" not in capsys.readouterr().err  # nothing ran again
    assert _table(carried) == _table(out)


def test_a_claim_is_kept_while_its_job_lives_and_taken_over_when_it_is_gone(tmp_path):
    cell = tmp_path / "cells" / "ga-dual-3-s0"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        path = tmp_path / "claims" / cell.name
        path.parent.mkdir(parents=True)
        path.write_text(f"{socket.gethostname()} {live.pid}")
        assert not claim(cell, stale_after=3600)
        path.write_text(f"{socket.gethostname()} {dead.pid}")
        assert claim(cell, stale_after=3600)
        assert path.read_text() == f"{socket.gethostname()} {os.getpid()}"
        # ours now: a second call in this process does not take it twice
        assert not claim(cell, stale_after=3600)
        # another machine's: kept until its cell stops changing
        path.write_text(f"elsewhere {live.pid}")
        assert not claim(cell, stale_after=3600)
        assert claim(cell, stale_after=0)
    finally:
        live.kill()
