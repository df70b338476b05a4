"""Forget accuracy on digits under three rules, side by side, on fixed sets of digits and junk and
on samples of erased models: the digits classifier with "not a digit" (the rule since then: top
class of 11), the published top-class rule (top class among the ten digits, same classifier), and
the rule before (the 10-class classifier trained without augmentation, top class at probability
>= 0.9 and within L2 4.5 of a real image of the digit).

The sets: `metrics.not_a_digit.validation_sets` on the 360 held-out digits; and for one digit erased
at one seed with the `digits` preset: the erased model's samples, held-out real digits blended 60/40
with them, the weights halfway between base and erased, and the same erasure stopped after half of
its outer steps (its alpha schedule unchanged). Every row gives the share counted as the set's digit
(for pure junk: as any digit). With --figure, the first 24 images of every set, each framed by the
new rule's verdict."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, table  # noqa: E402
from dualerase import erase_class  # noqa: E402
from dualerase.config import load_config  # noqa: E402
from dualerase.metrics.classifier import load_classifier, probabilities  # noqa: E402
from dualerase.metrics.fid import DigitsScorer  # noqa: E402
from dualerase.metrics.not_a_digit import NOT_A_DIGIT, overlaid, validation_sets  # noqa: E402
from dualerase.models.digits import load_digits, prepare_digits_classifier, train_test_split  # noqa: E402
from dualerase.reports.summary import verdict_rows  # noqa: E402
from dualerase.runs.workload import prepare  # noqa: E402
from dualerase.sampling import class_labels, from_uint8, generate, to_uint8  # noqa: E402

# The classifier recipe and FA gates of the digits preset before "not a digit".
BEFORE = dict(epochs=30, not_a_digit=False, junk_share=0.0, stroke_share=0.0, shift=0, rotate=0.0,
              scale=0.0, overlay_share=0.0)
GATES = (0.9, 4.5)


def rules(new, old, old_scorer, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The share of `images` counted as their label (for junk, NOT_A_DIGIT: as any digit) under each
    rule."""
    p_new, p_old = probabilities(new, images), probabilities(old, images)
    junk = labels == NOT_A_DIGIT
    top, published, old_top = p_new.argmax(1), p_new[:, :NOT_A_DIGIT].argmax(1), p_old.argmax(1)
    near = torch.zeros(len(images), dtype=torch.bool)
    for digit in labels[~junk].unique().tolist():
        pick = labels == digit
        near[pick] = old_scorer.real_distance(images[pick], digit) <= GATES[1]
    gated = (p_old.max(1).values >= GATES[0]) & near

    def share(hit):
        return hit.float().mean().item()

    return {"new rule (top of 11)": share(torch.where(junk, top != NOT_A_DIGIT, top == labels)),
            "published (top of 10, same net)": share(torch.where(junk, torch.ones_like(junk),
                                                                 published == labels)),
            "called not a digit": share(top == NOT_A_DIGIT),
            "rule before (p >= 0.9, L2 <= 4.5)": share(torch.where(junk, gated,
                                                                   (old_top == labels) & gated)),
            "before's net, top class": share(torch.where(junk, torch.ones_like(junk),
                                                         old_top == labels))}


def samples_of(model, w, cfg, digit: int, n: int) -> torch.Tensor:
    labels = class_labels(w.num_classes, n, only=digit)
    images = generate(model, w.vae, cfg.sample, labels, precision=cfg.compute.mixed_precision,
                      seed=cfg.seed, cache_dir=None, desc="", progress=False)
    return from_uint8(to_uint8(images))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--digit", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--figure", type=Path,
                   help="PNG of the first 24 images of every set, framed by the new verdict")
    args = p.parse_args(argv)
    cfg = load_config("digits", [f"seed={args.seed}"])
    print(header("forget-accuracy rules on digits",
                 {"digit": args.digit, "seed": args.seed, "samples": args.samples,
                  "classifier": cfg.classifier, "before": BEFORE}))
    x, y = load_digits()
    _, test = train_test_split(y)
    new = load_classifier(prepare_digits_classifier(cfg.classifier, progress=False)[0])
    old_path, old_acc = prepare_digits_classifier(dataclasses.replace(cfg.classifier, **BEFORE),
                                                  progress=False)
    old = load_classifier(old_path)
    old_scorer = DigitsScorer(old, old_path, old_acc, x, y)
    fixed = validation_sets(x[test], y[test])
    rows = [{"set": name, "n": len(labels), **rules(new, old, old_scorer, images, labels)}
            for name, (images, labels) in fixed.items()]

    w = prepare(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        full = erase_class(args.digit, overrides={"seed": args.seed}, output=Path(tmp) / "full",
                           progress=False)
        half = erase_class(args.digit, output=Path(tmp) / "half", progress=False, overrides={
            # two probes in a row: stops at half the steps
            "seed": args.seed, "erase.stop_at_forget_accuracy": 1.0,
            "erase.probe_every": cfg.erase.outer_steps // 4, "erase.probe_samples": 1,
            "erase.probe_steps": 1})
    base = {k: v.clone() for k, v in w.model.state_dict().items()}
    erased = samples_of(full.model, w, cfg, args.digit, args.samples)
    halfway = full.model
    halfway.load_state_dict({k: (base[k] + v) / 2 for k, v in full.model.state_dict().items()})
    real = x[test][y[test] == args.digit]
    sets = {f"samples of the base model ({args.digit})":
                samples_of(w.model, w, cfg, args.digit, args.samples),
            f"samples of the erased model ({cfg.erase.outer_steps} steps)": erased,
            f"held-out real {args.digit}s blended 60/40 with erased samples":
                overlaid(real, erased[:len(real)], 0.4),
            "samples of the weights halfway between base and erased":
                samples_of(halfway, w, cfg, args.digit, args.samples),
            f"samples of the erasure stopped at {half.metrics['outer_steps']} of "
            f"{cfg.erase.outer_steps} steps":
                samples_of(half.model, w, cfg, args.digit, args.samples)}
    for name, images in sets.items():
        rows.append({"set": name, "n": len(images),
                     **rules(new, old, old_scorer, images, torch.full((len(images),), args.digit))})
    print(table(rows))
    if args.figure:
        shown = [(name, images[:24], labels[:24]) for name, (images, labels) in fixed.items()]
        shown += [(name, images[:24], torch.full((24,), args.digit))
                  for name, images in sets.items()]
        strips = []
        for name, images, labels in shown:
            top = probabilities(new, images).argmax(1)
            verdicts = ["not a digit" if t == NOT_A_DIGIT else "counted" if t == lab else
                        "another class" for t, lab in zip(top.tolist(), labels.tolist())]
            strips.append((name, to_uint8(images), verdicts))
        verdict_rows(strips).save(args.figure)
    print("\nclassifier held-out accuracy: new "
          f"{prepare_digits_classifier(cfg.classifier, False)[1]:.3f}, before {old_acc:.3f}. "
          f"Samples: {cfg.sample.scheduler}, {cfg.sample.steps} steps, guidance "
          f"{cfg.sample.guidance}, seed {args.seed}.")


if __name__ == "__main__":
    main()
