"""The two attacks of the `robustness` section on digits, against four models of one digit: the base
model, the base model with the digit's label unlinked (its class-embedder rows replaced by another
digit's, every weight kept), a weak erasure and the default one. Prints, per model, forget accuracy
by the probe, the relearning attack's curve, steps to relearn and area for each k, the conditioning
attack's forget accuracy from the class's row and from the null row, and the seconds each attack
took.

    python benchmarks/attacks.py --digit 3 --seed 0
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402
from dualerase import erase_class  # noqa: E402
from dualerase.config import load_config  # noqa: E402
from dualerase.runs.probe import ForgetProbe  # noqa: E402
from dualerase.runs.robustness import conditioning_attack, relearn, unlinked  # noqa: E402
from dualerase.runs.workload import prepare  # noqa: E402

ROBUSTNESS = ["robustness.relearn_images=[8, 64]", "robustness.attack_steps=200"]
# stops at the first probe that reads FA <= 0.1: erased, barely
WEAK = {"erase.stop_at_forget_accuracy": 0.1}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--digit", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = load_config("digits", [f"seed={args.seed}", *ROBUSTNESS])
    print(header("attacks on digits",
                 {"digit": args.digit, "seed": args.seed, "robustness": cfg.robustness,
                  "probe": f"{cfg.erase.probe_samples} samples at {cfg.erase.probe_steps} steps",
                  "weak erasure": WEAK}))
    w = prepare(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        strong = erase_class(args.digit, overrides={"seed": args.seed}, output=Path(tmp) / "strong",
                             progress=False)
        weak = erase_class(args.digit, overrides={"seed": args.seed, **WEAK},
                           output=Path(tmp) / "weak", progress=False)
    models = {"base": w.model, f"base, label unlinked (rows of {(args.digit + 5) % 10})":
              unlinked(w.model, args.digit, (args.digit + 5) % 10),
              "weak erasure (stopped at probe FA <= 0.1)": weak.model,
              "default erasure": strong.model}
    null = dataclasses.replace(cfg, robustness=dataclasses.replace(cfg.robustness,
                                                                   attack_start="null"))
    rows = []
    for name, model in models.items():
        row = {"model": name, "FA (probe)": ForgetProbe(w, cfg, args.digit)(model)}
        start = time.perf_counter()
        for k, attack in relearn(model, w, cfg, args.digit)["relearn"].items():
            row[f"relearn {k}: FA at {'/'.join(attack['forget_accuracy'])}"] = " / ".join(
                f"{v:.2f}" for v in attack["forget_accuracy"].values())
            row[f"relearn {k}: steps, area"] = f"{attack['steps_to_relearn']}, {attack['area']:.2f}"
        row["relearn s"] = time.perf_counter() - start
        start = time.perf_counter()
        row["attack from class row"] = conditioning_attack(
            model, w, cfg, args.digit)["conditioning_attack"]["forget_accuracy"]
        row["attack from null row"] = conditioning_attack(
            model, w, null, args.digit)["conditioning_attack"]["forget_accuracy"]
        row["attacks s"] = time.perf_counter() - start
        rows.append(row)
    print(table(rows))
    print("\nerasure FA (evaluation, 200 samples): default "
          f"{strong.metrics['after']['forget_accuracy']:.3f} after {strong.metrics['outer_steps']} "
          f"outer steps, weak {weak.metrics['after']['forget_accuracy']:.3f} after "
          f"{weak.metrics['outer_steps']}")


if __name__ == "__main__":
    main()
