"""The committed benchmark records redraw the tables and figures they back (bench/records.py).

They also read back as they were written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualerase.bench.bench import run_spec
from dualerase.bench.cells import plan
from dualerase.bench.records import CELLS, LOGS, pack, unpack
from dualerase.cli import fid_bench
from dualerase.config import saved_config
from dualerase.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "records"
DOCS = ROOT / "docs" / "bench-digits"
# how the recorded benchmarks ran: one thread, on the digits DiT trained on every digit (the
# preset of their commits; the digits preset trains on the train split since)
RAN_WITH = ["compute.threads=1", "digits.data=all"]


def _body(path: Path) -> list[str]:
    """A results.md without its command line, which names the folder the tables were drawn in."""
    return [line for line in path.read_text().splitlines() if not line.startswith("Command: ")]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _same_figure(drawn: Path, committed: Path) -> None:
    a, b = _pixels(drawn), _pixels(committed)
    assert a.shape == b.shape, drawn.name
    assert np.abs(a - b).mean() < 0.5, drawn.name  # font rendering may differ by a pixel's shade


def _aggregate(spec: str, records: Path, out: Path) -> None:
    unpack(records, out)
    grid = plan(spec, overrides=RAN_WITH)
    run_spec(grid, out, progress=False, aggregate_only=True, command=f"fid-bench {spec}")


def test_the_tuned_comparison_is_drawn_again_from_its_records(tmp_path):
    _aggregate("digits-tuned", RECORDS / "digits-tuned", tmp_path)
    assert _body(tmp_path / "results.md") == _body(DOCS / "results.md")
    assert _body(tmp_path / "tune" / "results.md") == _body(DOCS / "tuning.md")
    assert (tmp_path / "results.csv").read_text() == (DOCS / "results.csv").read_text()
    for preset in (DOCS / "tuned").glob("*.yaml"):  # the same head, and the same config as it loads
        drawn = tmp_path / "tuned" / preset.name
        head = [line for line in preset.read_text().splitlines() if line.startswith("#")]
        assert [line for line in drawn.read_text().splitlines() if line.startswith("#")] == head
        assert saved_config(drawn) == saved_config(preset), preset.name
    assert len(list((DOCS / "tuned").glob("*.yaml"))) == 8
    for figure in ("forget_loss.png", "grad_norms.png"):
        _same_figure(tmp_path / figure, DOCS / figure)
    # written again from the drawn folder, the records are the committed ones, byte for byte
    pack(tmp_path, tmp_path / "again", "digits")
    for name in (CELLS, LOGS):
        assert ((tmp_path / "again" / name).read_bytes()
                == (RECORDS / "digits-tuned" / name).read_bytes())


def test_the_fidelity_effects_table_is_printed_again_from_its_records():
    printed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fidelity_effects.py"), "--records",
         str(RECORDS / "digits-tuned"), "--output", str(RECORDS / "digits-fidelity-effects")],
        capture_output=True, text=True, check=True).stdout
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    committed = [line for line in (DOCS / "fidelity-effects.md").read_text().splitlines()
                 if line.startswith("| ")]
    assert len(rows) == 19 and rows == committed


def test_the_sensitivity_sweep_is_drawn_again_by_fid_bench_from_its_records(tmp_path, capsys):
    """--records with --aggregate: the tables and figure from the records alone.

    The records are written again unchanged."""
    records = tmp_path / "records"
    records.mkdir()
    (records / CELLS).write_bytes((RECORDS / "digits-sensitivity" / CELLS).read_bytes())
    out = tmp_path / "bench"
    sets = [a for s in RAN_WITH for a in ("--set", s)]
    assert fid_bench.main(["digits-sensitivity", "--output", str(out), "--records", str(records),
                           "--aggregate", "--quiet", *sets]) == 0
    assert f"wrote {records}/: 120 cells in {CELLS}\n" in capsys.readouterr().out
    committed = DOCS / "sensitivity"
    assert _body(out / "results.md") == _body(committed / "results.md")
    assert (out / "results.csv").read_text() == (committed / "results.csv").read_text()
    _same_figure(out / "sensitivity.png", DOCS / "sensitivity.png")
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 107  # and 13 diverged
    assert len(list(out.glob("cells/*/diverged.txt"))) == 13
    assert (records / CELLS).read_bytes() == (RECORDS / "digits-sensitivity" / CELLS).read_bytes()
    assert not (records / LOGS).exists()  # a sweep keeps no logs


def test_a_recorded_cell_does_not_replace_a_result_in_the_output(tmp_path):
    line = json.loads((RECORDS / "digits-sensitivity" / CELLS).read_text().splitlines()[0])
    folder = tmp_path / line["folder"]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"mine": 1}')
    written = unpack(RECORDS / "digits-sensitivity", tmp_path)
    assert written == 119 and json.loads((folder / "metrics.json").read_text()) == {"mine": 1}


@pytest.mark.parametrize("text", ["not json", '{"folder": "cells/x"}'])
def test_a_damaged_records_file_is_one_line(tmp_path, text):
    (tmp_path / CELLS).write_text(text + "\n")
    with pytest.raises(UsageError, match=f"{CELLS} line 1 is not a cell record"):
        unpack(tmp_path, tmp_path / "out")
    with pytest.raises(UsageError, match="holds no cells.jsonl"):
        unpack(tmp_path / "missing", tmp_path / "out")
