r"""The measured effect of each published choice the project does not make by default (README,
"Fidelity to the published code"): each switch is run on the digits tuning cell it concerns, at
the operating point the tuning chose for that method and optimizer mode (seed 100, fast protocol,
the cell's own config.yaml), and printed next to that cell.

    python benchmarks/fidelity_effects.py --records benchmarks/records/digits-tuned \
        --output fidelity-effects
    python benchmarks/fidelity_effects.py ... --classes 3 7 --only sa-save-fim

Finished runs in --output are read again, not rerun (a killed call continues). --records and
--output may also be folders of records (cells.jsonl, as `fid-bench --records` writes them): their
runs are read from there; `--output benchmarks/records/digits-fidelity-effects` reprints the
committed table. The runs use the code of the commit it prints; the tuning cells are those of the
records' commit (their README).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header, table  # noqa: E402
from dualerase.bench.records import CELLS, unpack  # noqa: E402

# name: (methods it concerns, --set values that switch it on)
SWITCHES = {
    "as-tuned": (["salun", "sa"], []),  # nothing switched: this commit reproduces the tuning cell
    "no-variance-term": (["salun", "sa"], ["method.variance_term=none"]),
    "salun-train-mode-dropout": (["salun"], ["erase.forget_label_dropout=0.1",
                                             "method.pseudo_label_dropout=0.1"]),
    "sa-save-fim": (["sa"], ["method.fisher_classes=all", "method.fisher_label_dropout=0.1"]),
    "antithetic": (["salun", "sa"], ["method.antithetic_timesteps=true"]),
    "sa-ema": (["sa"], ["erase.ema_decay=0.9999"]),
}
SCORES = ("forget_accuracy", "retain_accuracy", "fid")


TUNED = ROOT / "docs" / "bench-digits" / "tuned"  # the committed presets of the tuned comparison


def runs_of(folder: Path, scratch: Path) -> Path:
    """A folder of runs as it is, or a folder of records written out into `scratch` first."""
    if not (folder / CELLS).exists():
        return folder
    unpack(folder, scratch)
    return scratch


def tuned_cell(records: Path, tuned: Path, method: str, optimizer: str, forget: str) -> Path:
    """The tuning cell of `forget` at the setting chosen for (method, optimizer).

    The setting is the one tuned/<pair>.yaml's head names."""
    head = (tuned / f"{method}-{optimizer}.yaml").read_text().splitlines()[0]
    setting = head.split(": ", 1)[1].split()  # e.g. erase.forget_lr=0.0001 erase.alpha=1.0
    suffix = "-".join(f"{k.rsplit('.', 1)[1]}{v}" for k, v in (s.split("=") for s in setting))
    (cell,) = (records / "tune" / "cells").glob(f"{method}-{optimizer}-{forget}-s*-{suffix}")
    return cell


def scores(cell: Path) -> dict:
    after = json.loads((cell / "metrics.json").read_text())["after"]
    return {k: after[k] for k in SCORES}


def switch_rows(args, records: Path, presets: Path, output: Path) -> list[dict]:
    """Each switch's row: the tuned cells' means and the switched runs' (run where missing)."""
    rows = []
    for name in args.only or SWITCHES:
        methods, sets = SWITCHES[name]
        for method in methods:
            for optimizer in args.optimizers:
                tuned, switched = [], []
                for forget in args.classes:
                    cell = tuned_cell(records, presets, method, optimizer, forget)
                    out = output / name / cell.name
                    if not (out / "metrics.json").exists() and output != args.output:
                        raise SystemExit(f"{name}/{cell.name} is not in the records "
                                         f"{args.output}: give a folder of runs as --output to "
                                         "run it")
                    if not (out / "metrics.json").exists():
                        cmd = ["erase-class", forget, "--config", str(cell / "config.yaml"),
                               "--output", str(out), "--quiet", "--overwrite",
                               *(a for s in sets for a in ("--set", s))]
                        print(" ".join(cmd), flush=True)
                        subprocess.run(cmd, check=True)
                    tuned.append(scores(cell))
                    switched.append(scores(out))
                row = {"switch": name, "method": method, "optimizer": optimizer}
                for key, short in zip(SCORES, ("FA", "retain", "FID")):
                    row[f"{short} tuned"] = statistics.fmean(s[key] for s in tuned)
                    row[f"{short} switched"] = statistics.fmean(s[key] for s in switched)
                rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=Path, required=True,
                   help="a finished tuning stage (tune/cells/ and tuned/), or the records of one "
                        "(cells.jsonl)")
    p.add_argument("--tuned", type=Path, help="the tuned presets (default: --records' tuned/, else "
                   "the committed docs/bench-digits/tuned/)")
    p.add_argument("--output", type=Path, required=True,
                   help="where the switched runs go (and are found again)")
    p.add_argument("--classes", nargs="+", default=["3"], help="forget classes (default: 3)")
    p.add_argument("--optimizers", nargs="+", default=["dual", "shared"])
    p.add_argument("--only", nargs="+", choices=list(SWITCHES), help="these switches only")
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="fidelity-effects-") as scratch:
        records = runs_of(args.records, Path(scratch) / "records")
        presets = args.tuned or (records / "tuned" if (records / "tuned").is_dir() else TUNED)
        rows = switch_rows(args, records, presets, runs_of(args.output, Path(scratch) / "output"))
    print(header("published choices switched on, at each pair's tuned setting",
                 {"commit": commit, "records": args.records, "classes": " ".join(args.classes),
                  "seed": 100, "protocol": "fast (the tuning cells' config.yaml)"}))
    print(" ".join(f"{n}: {' '.join(SWITCHES[n][1])};" for n in args.only or SWITCHES))
    print(table(rows))


if __name__ == "__main__":
    main()
