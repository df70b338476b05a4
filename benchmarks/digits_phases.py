"""The digits main command (`erase-class N` with the default preset) timed phase by phase: runs it
in a fresh process (with --cold, on an empty cache: the digits DiT and classifier are trained first)
and prints each phase's seconds and share, from the run's metrics.json timings."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402

PHASES = [("prepare_s", "workload: load (cold: train) the digits DiT and classifier, real data"),
          ("before_eval_s", "base model's evaluation (cached after a first run)"),
          ("prepare_method_s", "method preparation (SFR-on: two Fisher diagonals; cached)"),
          ("erase_s", "erasure (Algorithm 1)"),
          ("after_eval_s", "erased model's evaluation")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("digit", nargs="?", default="3")
    p.add_argument("--cold", action="store_true",
                   help="on an empty cache (DUALERASE_HOME in a temporary folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **({"DUALERASE_HOME": str(Path(tmp) / "cache")} if args.cold else {})}
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "dualerase.cli.erase_class", args.digit, "--output", str(out),
               "--quiet"]
        cmd += [a for kv in args.overrides for a in ("--set", kv)]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - start
        m = json.loads((out / "metrics.json").read_text())
    t = m["timings"]
    rows = [{"phase": label, "s": t[key], "share": f"{t[key] / wall:.1%}"} for key, label in PHASES]
    rest = t["total_s"] - sum(t[key] for key, _ in PHASES)
    rows.append({"phase": "grids, model card, files", "s": rest, "share": f"{rest / wall:.1%}"})
    rows.append({"phase": "process start, imports, exit", "s": wall - t["total_s"],
                 "share": f"{(wall - t['total_s']) / wall:.1%}"})
    rows.append({"phase": "wall time of the command", "s": wall, "share": "100%"})
    print(header(f"erase-class {args.digit} on the digits default, "
                 f"{'cold (empty cache)' if args.cold else 'warm'}",
                 {"overrides": args.overrides or "none", "outer steps": m["outer_steps"],
                  "sampler": f"{m['protocol']['sampler']}, {m['protocol']['steps']} steps",
                  "samples": f"{m['protocol']['forget_samples']} forget / "
                             f"{m['protocol']['retain_samples']} retain"}))
    print(table(rows))


if __name__ == "__main__":
    main()
