"""SA's Fisher on the digits DiT: a stratified subsample of K timesteps (rescaled by T/K) against
all T = 1000, and against the old one-timestep, pixel-mean Fisher. Prints totals, their ratio and
the correlation over weights.

    python benchmarks/sa_fisher_timesteps.py             # timesteps
    python benchmarks/sa_fisher_timesteps.py --save-fim  # SA's save_fim samples (every class,
                                                         # label dropout 0.1)

With --save-fim, at K stratified timesteps: the Fisher over samples of the retained classes (digit 3
forgotten), labels kept (our default), against samples of every class with label dropout 0.1 per
timestep (SA's save_fim; method.fisher_classes=all, method.fisher_label_dropout=0.1), and the same
on the images in [0, 1], as save_fim computes it (method.fisher_unit_range): totals, their ratio,
and the share of the class embedding's Fisher on the forget class's and the null class's rows."""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualerase.config import load_config  # noqa: E402
from dualerase.models.digits import dit_folder, load_digits, load_digits_dit  # noqa: E402
from dualerase.models.dit import make_scheduler  # noqa: E402
from dualerase.models.loss import DiTLoss  # noqa: E402
from dualerase.unlearn.saliency import fisher_diagonal  # noqa: E402

SAMPLES, SUBSAMPLE = 64, 100


def stream(x, y):
    for i in range(SAMPLES):
        yield x[i:i + 1], y[i:i + 1], torch.tensor([i])


def flat(fisher):
    return torch.cat([f.flatten() for f in fisher.values()])


def save_fim(model, x, y, loss, forget=3, dropout=0.1):
    keep = y != forget

    def fisher(xs, ys, p):
        return fisher_diagonal(model, lambda m, b: loss.timestep_sum(m, b, SUBSAMPLE, 1000, p),
                               stream(xs, ys), SAMPLES, progress=False)

    ours, every, published = fisher(x[keep], y[keep], 0.0), fisher(x, y, 0.0), fisher(x, y, dropout)
    unit = fisher((x + 1) / 2, y, dropout)  # save_fim's images as saved, in [0, 1]

    def rows(diagonal):
        table = sum(f.sum(1) for n, f in diagonal.items()
                    if n.endswith("class_embedder.embedding_table.weight"))
        return table / table.sum()

    print(f"{SAMPLES} real digits, {SUBSAMPLE} stratified timesteps, digits DiT (digits preset), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, f in (("retained classes, labels kept (ours)", ours),
                    ("every class, labels kept", every),
                    (f"every class, label dropout {dropout} (save_fim's samples)", published),
                    ("the same, images in [0, 1] (save_fim as published; "
                     "method.fisher_unit_range)", unit)):
        share = rows(f)
        print(f"{name}: total {flat(f).sum():.4g} ({flat(f).sum() / flat(ours).sum():.3f} of "
              f"ours); class embedding rows: forget class {share[forget]:.3f}, null class "
              f"{share[-1]:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save-fim", action="store_true",
                   help="compare with SA's save_fim samples instead")
    args = p.parse_args()
    recipe = load_config("digits").digits  # the shipped digits DiT
    model = load_digits_dit(recipe, progress=False)
    print(f"model: digits/{dit_folder(recipe).name}")
    x, y = load_digits()
    loss = DiTLoss(make_scheduler())
    if args.save_fim:
        return save_fim(model, x, y, loss)
    full, sub = (flat(fisher_diagonal(model, lambda m, b, k=k: loss.timestep_sum(m, b, k, 1000),
                                      stream(x, y), SAMPLES, progress=False))
                 for k in (1000, SUBSAMPLE))
    old = flat(fisher_diagonal(model, loss, stream(x, y), SAMPLES, progress=False))
    corr = torch.corrcoef(torch.stack([full, sub]))[0, 1]
    print(f"{SAMPLES} real digits, digits DiT (digits preset), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"total Fisher: all 1000 timesteps {full.sum():.4g}; {SUBSAMPLE} stratified "
          f"{sub.sum():.4g} (ratio {sub.sum() / full.sum():.3f}, correlation over weights "
          f"{corr:.3f})")
    print(f"old one-timestep pixel-mean Fisher: {old.sum():.4g}; SA's is "
          f"{full.sum() / old.sum():.3g} times larger")


if __name__ == "__main__":
    main()
