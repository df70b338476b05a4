"""How long a command takes to answer --help, --version and a bad argument (all before torch is
imported), against the import of what a real run loads (torch, diffusers, timm, torch-fidelity):
median wall seconds of fresh processes, measured side by side."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402

COMMANDS = ("erase_class", "sample_grid", "fid_bench", "fid_reference")
RUN_IMPORTS = "import dualerase.runs.job, dualerase.bench.bench, dualerase.metrics.imagenet"


def seconds(code: str, repeats: int) -> float:
    """Median wall seconds of `python -c code` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats: int = 5) -> None:
    print(header("command start-up", {"repeats": repeats}))
    heavy = seconds(RUN_IMPORTS, repeats)
    rows = []
    for command in COMMANDS:
        call = f"from dualerase.cli.{command} import main; main"
        for what, args in (("--help", "['--help']"), ("--version", "['--version']"),
                           ("bad argument", "['--bogus']")):
            s = seconds(f"{call}({args})", repeats)
            rows.append({"command": command.replace("_", "-"), "asked": what, "s": s,
                         "of a run's imports": s / heavy})
    print(table(rows))
    print(f"\na run's imports ({RUN_IMPORTS}): {heavy:.2f} s")


if __name__ == "__main__":
    main()
