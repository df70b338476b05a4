"""The forget-class samples of every cell of a finished digits `fid-bench` run, 24 per cell, each
framed by the verdict of the digits classifier (counted as the erased digit, another digit, "not a
digit"): the picture a person checks the forget-accuracy rule against. Prints each cell's three FA
numbers from its metrics.json next to the share recounted here from the 24 shown."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table  # noqa: E402
from dualerase.config import load_config  # noqa: E402
from dualerase.metrics.classifier import load_classifier, probabilities  # noqa: E402
from dualerase.metrics.not_a_digit import NOT_A_DIGIT  # noqa: E402
from dualerase.models.digits import prepare_digits_classifier  # noqa: E402
from dualerase.reports.summary import verdict_rows  # noqa: E402
from dualerase.storage import atomic_path  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("bench", type=Path,
                   help="the --output folder of a finished digits fid-bench run")
    p.add_argument("--output", type=Path, required=True, help="PNG to write")
    p.add_argument("--per-cell", type=int, default=24)
    args = p.parse_args(argv)
    net = load_classifier(prepare_digits_classifier(load_config("digits").classifier,
                                                    progress=False)[0])
    rows, lines = [], []
    cells = sorted(args.bench.glob("cells/*/metrics.json"),
                   key=lambda m: (json.loads(m.read_text())["forget_class"],
                                  json.loads(m.read_text())["seed"]))
    for path in cells:
        m = json.loads(path.read_text())
        digit, seed = m["forget_class"], m["seed"]
        images = torch.from_numpy(
            np.load(path.parent / "samples" / "forget.npz")["arr_0"][:args.per_cell])
        images = images.permute(0, 3, 1, 2).contiguous()
        top = probabilities(net, images.float() / 127.5 - 1).argmax(1)
        verdicts = ["counted" if t == digit else "not a digit" if t == NOT_A_DIGIT else
                    "another class" for t in top.tolist()]
        rows.append((f"digit {digit}, seed {seed}", images, verdicts))
        a = m["after"]
        lines.append({"digit": digit, "seed": seed, "FA": a["forget_accuracy"],
                      "FA, published rule": a["forget_accuracy_published"],
                      "not a digit": a["forget_not_a_class"],
                      f"FA of the {args.per_cell} shown":
                          verdicts.count("counted") / len(verdicts)})
    with atomic_path(args.output) as tmp:
        verdict_rows(rows).save(tmp, format="PNG")
    print(table(lines))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
