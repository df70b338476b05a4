"""Membership inference on the shipped digits DiT and its retrained reference (RT, trained again
without every image of the forget class): do the attacks tell the forget class's training images
from its held-out images, and does RT, which never saw them, read them as non-members?

    python benchmarks/membership.py --forget-class 3

For each model and each attack (the loss attack and SimA, `dualerase.metrics.membership`): AUC and
TPR at 1% FPR of the forget class's training images (members of the base model) against its
held-out images, with 95% bootstrap intervals and the counts; the same on the retained classes; and
the MIA efficacy (the share of the forget class's training images called non-members by the
threshold that best separates the retained classes). RT is trained once (about 10 minutes on one
idle core) and cached like the base model; the wall time of each step is printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget-class", type=int, default=3)
    args = p.parse_args(argv)
    import torch

    from benchmarks.common import header, table
    from dualerase.config import load_config
    from dualerase.metrics.membership import attack, efficacy, loss_scores, sima_scores
    from dualerase.models.digits import (
        dit_folder,
        load_digits,
        prepare_digits_dit,
        prepare_retrained,
        train_test_split,
    )
    from dualerase.models.dit import load_dit, make_scheduler

    torch.set_num_threads(1)
    recipe, c = load_config("digits").digits, args.forget_class
    started = time.perf_counter()
    models = {"base": load_dit(str(prepare_digits_dit(recipe, progress=False)))}
    rt = prepare_retrained(recipe, c, progress=True)
    trained = time.perf_counter()
    models["RT (without the class)"] = load_dit(str(rt))
    x, y = load_digits()
    train, held = train_test_split(y)
    alphas = make_scheduler().alphas_cumprod
    print(header("membership inference: the shipped digits DiT and its retrained reference",
                 {"forget class": c, "base": f"digits/{dit_folder(recipe).name}",
                  "RT": f"digits/{rt.name}", "threads": 1}))
    rows = []
    for name, model in models.items():
        model.eval()
        for attack_name, score in (
                ("loss", lambda m, xs, ys: loss_scores(m, xs, ys, alphas)),
                ("SimA", lambda m, xs, ys: sima_scores(m, xs, ys))):
            t0 = time.perf_counter()
            s_train, s_held = score(model, x[train], y[train]), score(model, x[held], y[held])
            f_train, f_held = s_train[y[train] == c], s_held[y[held] == c]
            r_train, r_held = s_train[y[train] != c], s_held[y[held] != c]
            forget, retain = attack(f_train, f_held), attack(r_train, r_held)
            rows.append({
                "model": name, "attack": attack_name,
                "forget AUC": f"{forget['auc']:.3f} [{forget['auc_95'][0]:.3f}, "
                              f"{forget['auc_95'][1]:.3f}]",
                "forget TPR@1%FPR": f"{forget['tpr_at_1fpr']:.3f} "
                                    f"[{forget['tpr_at_1fpr_95'][0]:.3f}, "
                                    f"{forget['tpr_at_1fpr_95'][1]:.3f}]",
                "forget n (train/held-out)": f"{forget['members']}/{forget['nonmembers']}",
                "retain AUC": f"{retain['auc']:.3f} [{retain['auc_95'][0]:.3f}, "
                              f"{retain['auc_95'][1]:.3f}]",
                "retain n": f"{retain['members']}/{retain['nonmembers']}",
                "MIA efficacy": f"{efficacy(f_train, r_train, r_held):.3f}",
                "wall s": f"{time.perf_counter() - t0:.1f}"})
    print(table(rows))
    print(f"\nRT ready (trained or cached) in {trained - started:.0f} s")


if __name__ == "__main__":
    main()
