"""The shipped digits weights: train the digits DiT and classifier by the digits preset's recipes
(one torch thread, a fresh cache), measure them, and write them with their manifest.

    python benchmarks/digits_weights.py --write    # into src/dualerase/weights/ (a release)
    python benchmarks/digits_weights.py            # train afresh, compare with the bounds

Measured: the DiT's forget accuracy (of digit 3: the share of its samples the classifier calls 3),
retain accuracy and FID under the preset's full protocol (seed 0); the classifier's accuracy on the
held-out split and on each "not a digit" validation set (`metrics.not_a_digit.validation_sets`).
Without --write it exits 1 when a fresh training lands outside the manifest's bounds.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS = ROOT / "src" / "dualerase" / "weights"
COMMAND = "python benchmarks/digits_weights.py --write"
FORGET = 3  # the default run's class


def measure(home: Path) -> tuple[dict, dict]:
    """Train both models into the cache `home` by the preset's recipes; (their files, quality)."""
    os.environ["DUALERASE_HOME"] = str(home)
    import torch

    from dualerase.config import load_config
    from dualerase.metrics.classifier import accuracy, load_classifier
    from dualerase.metrics.not_a_digit import validation_sets
    from dualerase.models.digits import (
        classifier_path,
        dit_folder,
        load_digits,
        recipe_key,
        train_test_split,
    )
    from dualerase.runs.evaluation import evaluate_base, evaluation_config, protocol
    from dualerase.runs.workload import prepare

    torch.set_num_threads(1)
    cfg = load_config("digits", ["compute.threads=1", "digits.shipped=false"])
    w = prepare(cfg, progress=True)
    eval_cfg = evaluation_config(cfg)
    scores = evaluate_base(w, eval_cfg, FORGET, progress=True)
    x, y = load_digits()
    _, held_out = train_test_split(y)
    net = load_classifier(classifier_path(cfg.classifier))
    sets = {name: accuracy(net, images, labels)
            for name, (images, labels) in validation_sets(x[held_out], y[held_out]).items()}
    folder, clf = dit_folder(cfg.digits), classifier_path(cfg.classifier)
    files = {"dit": (folder, sorted(p for p in folder.iterdir() if p.is_file())),
             "classifier": (clf.parent, [clf])}
    quality = {"dit": {"forget_class": FORGET, "model": w.model_id,
                       **{k: scores[k] for k in ("forget_accuracy", "retain_accuracy", "fid")}},
               "classifier": {"held_out_accuracy": w.scorer.accuracy, "validation": sets},
               "recipes": {"digits": recipe_key(cfg.digits),
                           "classifier": dataclasses.asdict(cfg.classifier)},
               "protocol": protocol(eval_cfg, w, FORGET)}
    return files, quality


def bounds(quality: dict) -> dict:
    """What a fresh training by the same recipe must reach (another machine or library version
    may round differently): FA and retain accuracy within 0.05, FID within 1.5x, the classifier's
    accuracies within 0.02."""
    dit, clf = quality["dit"], quality["classifier"]
    return {"forget_accuracy_min": dit["forget_accuracy"] - 0.05,
            "retain_accuracy_min": dit["retain_accuracy"] - 0.05, "fid_max": dit["fid"] * 1.5,
            "held_out_accuracy_min": clf["held_out_accuracy"] - 0.02,
            "validation_min": {k: v - 0.02 for k, v in clf["validation"].items()}}


def violations(quality: dict, limits: dict) -> list[str]:
    """The bounds a measured quality breaks (none: it is within them)."""
    dit, clf = quality["dit"], quality["classifier"]
    out = []
    if dit["forget_accuracy"] < limits["forget_accuracy_min"]:
        out.append(f"DiT forget accuracy {dit['forget_accuracy']:.3f}")
    if dit["retain_accuracy"] < limits["retain_accuracy_min"]:
        out.append(f"DiT retain accuracy {dit['retain_accuracy']:.3f}")
    if dit["fid"] > limits["fid_max"]:
        out.append(f"DiT FID {dit['fid']:.2f}")
    if clf["held_out_accuracy"] < limits["held_out_accuracy_min"]:
        out.append(f"classifier held-out accuracy {clf['held_out_accuracy']:.3f}")
    for name, low in limits["validation_min"].items():
        if clf["validation"][name] < low:
            out.append(f"classifier on {name}: {clf['validation'][name]:.3f}")
    return out


def write(files: dict, quality: dict) -> None:
    """The weights and manifest.json into src/dualerase/weights/ (replacing the earlier ones)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    import torch

    manifest = {"command": COMMAND, "commit": commit, "torch": torch.__version__, "threads": 1}
    for kind, (folder, paths) in files.items():
        target = WEIGHTS / kind
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        digests = {}
        for path in paths:
            shutil.copyfile(path, target / path.name)
            digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        name = folder.name if kind == "dit" else paths[0].name
        manifest[kind] = {"name": name, "files": digests}
    manifest["quality"] = quality
    manifest["bounds"] = bounds(quality)
    (WEIGHTS / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true",
                   help="write the weights and manifest (a release)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="digits-weights-") as home:
        files, quality = measure(Path(home))
        print(json.dumps(quality, indent=2))
        if args.write:
            write(files, quality)
            print(f"wrote {WEIGHTS}")
            return 0
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    broken = violations(quality, manifest["bounds"])
    same = quality["dit"]["model"] == manifest["quality"]["dit"]["model"]
    print(f"fresh training {'reproduces' if same else 'differs from'} the shipped DiT "
          f"({quality['dit']['model']} against {manifest['quality']['dit']['model']})")
    if broken:
        print("outside the manifest's bounds: " + "; ".join(broken))
        return 1
    print("within the manifest's bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
