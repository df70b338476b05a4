"""A new user's first hour, timed: the README's two commands in a fresh clone and virtual
environment, with an empty model cache, on an idle machine or beside --load busy processes. Prints,
with the commit: the install, the first `erase-class 3` (which trains the digits DiT and classifier
once), a second one (warm cache), the test command, and the numbers the README quotes from such a
run (classifier accuracy, forget accuracy and FID before and after).

    python benchmarks/first_hour.py                 # idle
    python benchmarks/first_hour.py --load 2        # beside two processes spinning on the CPU
    python benchmarks/first_hour.py --skip-tests    # the first command only

pip's own cache is used as a user's would be after one earlier install; the packages are not
downloaded anew.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header, table  # noqa: E402


def spin(_: int) -> None:  # a busy process: what "a machine busy with other work" means here
    while True:
        sum(i * i for i in range(10_000))


def timed(cmd: str, cwd: Path, env: dict, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", type=int, default=0,
                   help="busy processes beside the commands (default 0: idle)")
    p.add_argument("--skip-tests", action="store_true", help="time the first command only")
    p.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    busy = multiprocessing.Pool(args.load) if args.load else None
    if busy:
        busy.map_async(spin, range(args.load))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep or Path(tmp)
            clone, logs = work / "clone", work / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
            # an empty model cache: the digits models are trained
            env["DUALERASE_HOME"] = str(work / "cache")
            activate = "python3 -m venv .venv && . .venv/bin/activate"
            rows = [{"step": "install (python3 -m venv, pip install -e \".[test]\")",
                     "s": timed(f'{activate} && pip install -q -e ".[test]"', clone, env,
                                logs / "install.log")}]
            rows.append({"step": "first erase-class 3 (trains the digits models once)",
                         "s": timed(". .venv/bin/activate && erase-class 3 --quiet", clone, env,
                                    logs / "first.log")})
            rows.append({"step": "second erase-class 3 --overwrite (warm cache)",
                         "s": timed(". .venv/bin/activate && erase-class 3 --quiet --overwrite",
                                    clone, env, logs / "second.log")})
            if not args.skip_tests:
                rows.append({"step": "python -m pytest -q",
                             "s": timed(". .venv/bin/activate && python -m pytest -q", clone, env,
                                        logs / "tests.log")})
            m = json.loads((clone / "runs" / "3-sfron-dual-s0" / "metrics.json").read_text())
    finally:
        if busy:
            busy.terminate()
    for row in rows:
        row["min"] = row["s"] / 60
    b, a = m["before"], m["after"]
    print(header("the README's two commands in a fresh clone",
                 {"commit": commit, "busy processes": args.load}))
    print(table(rows))
    print(f"\nfrom the run: classifier {m['protocol']['classifier']}; FA "
          f"{b['forget_accuracy']:.3f} -> {a['forget_accuracy']:.3f}, forget-class probability "
          f"{b['forget_probability']:.3f} -> {a['forget_probability']:.3f}, retain accuracy "
          f"{b['retain_accuracy']:.3f} -> {a['retain_accuracy']:.3f}, FID {b['fid']:.2f} -> "
          f"{a['fid']:.2f}")


if __name__ == "__main__":
    main()
