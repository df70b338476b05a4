"""SA's Fisher on the digits DiT: a stratified subsample of K timesteps (rescaled by T/K) against all T = 1000, and
against the old one-timestep, pixel-mean Fisher. Prints totals, their ratio and the correlation over weights."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualerase.models.digits import DigitsRecipe, load_digits, load_digits_dit  # noqa: E402
from dualerase.models.dit import make_scheduler  # noqa: E402
from dualerase.models.loss import DiTLoss  # noqa: E402
from dualerase.unlearn.saliency import fisher_diagonal  # noqa: E402

SAMPLES, SUBSAMPLE = 64, 100


def stream(x, y):
    for i in range(SAMPLES):
        yield x[i:i + 1], y[i:i + 1], torch.tensor([i])


def flat(fisher):
    return torch.cat([f.flatten() for f in fisher.values()])


def main():
    model = load_digits_dit(DigitsRecipe(), progress=False)
    x, y = load_digits()
    loss = DiTLoss(make_scheduler())
    full, sub = (flat(fisher_diagonal(model, lambda m, b, k=k: loss.timestep_sum(m, b, k, 1000), stream(x, y),
                                      SAMPLES, progress=False)) for k in (1000, SUBSAMPLE))
    old = flat(fisher_diagonal(model, loss, stream(x, y), SAMPLES, progress=False))
    corr = torch.corrcoef(torch.stack([full, sub]))[0, 1]
    print(f"{SAMPLES} real digits, digits DiT (default recipe), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"total Fisher: all 1000 timesteps {full.sum():.4g}; {SUBSAMPLE} stratified {sub.sum():.4g} "
          f"(ratio {sub.sum() / full.sum():.3f}, correlation over weights {corr:.3f})")
    print(f"old one-timestep pixel-mean Fisher: {old.sum():.4g}; SA's is {full.sum() / old.sum():.3g} times larger")


if __name__ == "__main__":
    main()
