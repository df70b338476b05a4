"""Membership inference on a diffusion model: is an image one the model trained on?

Two attacks, each a score per image (higher: more member-like):

* the loss attack: minus the model's epsilon MSE on the image, averaged over fixed timesteps and
  fixed noise draws (the same for every model, so that scores compare across models);
* SimA (Rao, Qu, Moyer, 2025, arXiv 2509.25003): one query at the clean image, minus the norm of the
  predicted noise. Near a training image the denoiser points at it, so its output is small there.

`attack` reads members' and non-members' scores as a detector: ROC AUC and the true-positive rate
at 1% false positives (torchmetrics), with bootstrap intervals; `efficacy` is the unlearning
papers' "MIA efficacy": the share of the forget class's training images that a threshold set on
the retained classes calls non-members. The model is anything called as a diffusers DiT
(`model(x_t, t, class_labels=y).sample`, the noise in its first channels)."""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

LOSS_TIMESTEPS = (50, 150, 300, 500, 700)  # the loss attack's fixed timesteps (of T = 1000)
LOSS_DRAWS = 2  # noise draws per timestep
SIMA_TIMESTEP = 100  # SimA's one query
FPR = 0.01
BOOTSTRAPS = 200


def _eps(model, x_t, t, labels) -> torch.Tensor:
    out = model(x_t, t, class_labels=labels).sample
    return out[:, : x_t.shape[1]].float()


@torch.no_grad()
def loss_scores(model, x0: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor, *,
                timesteps=LOSS_TIMESTEPS, draws: int = LOSS_DRAWS, seed: int = 0,
                batch_size: int = 256) -> torch.Tensor:
    """Minus each image's epsilon MSE, averaged over `timesteps` x `draws` fixed noises.

    The noise of draw d at timestep t is the same for every image index and every model (drawn
    from `seed`), so two models' scores of one image differ by the models alone."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noises = torch.randn((len(timesteps) * draws, *x0.shape), generator=gen)
    total = torch.zeros(len(x0))
    for k, t in enumerate(t for t in timesteps for _ in range(draws)):
        a = alphas_cumprod[t].float()
        for i in range(0, len(x0), batch_size):
            x, y = x0[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
            noise = noises[k, i:i + batch_size].to(device)
            x_t = a.sqrt() * x + (1 - a).sqrt() * noise
            step = torch.full((len(x),), t, device=device)
            err = (_eps(model, x_t, step, y) - noise).square().flatten(1).mean(1)
            total[i:i + batch_size] += err.cpu()
    return -total / (len(timesteps) * draws)


@torch.no_grad()
def sima_scores(model, x0: torch.Tensor, labels: torch.Tensor, *, timestep: int = SIMA_TIMESTEP,
                batch_size: int = 256) -> torch.Tensor:
    """SimA: minus the norm of the noise the model predicts at the clean image, at `timestep`."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x0), batch_size):
        x, y = x0[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        step = torch.full((len(x),), timestep, device=device)
        out.append(-_eps(model, x, step, y).flatten(1).norm(dim=1).cpu())
    return torch.cat(out)


def _tpr_at(preds: torch.Tensor, target: torch.Tensor, fpr: float) -> float:
    """The highest true-positive rate at a false-positive rate of at most `fpr`."""
    fprs, tprs, _ = binary_roc(preds, target)
    return float(tprs[fprs <= fpr].max())


def attack(members: torch.Tensor, nonmembers: torch.Tensor, *, seed: int = 0,
           bootstraps: int = BOOTSTRAPS) -> dict:
    """Members' against non-members' scores: AUC and TPR at 1% FPR, each with a 95% bootstrap
    interval (members and non-members resampled apart), and the two counts."""
    # as ranks in [0, 1] (ties kept): torchmetrics reads scores outside [0, 1] as logits, whose
    # sigmoid would merge large scores into ties; ROC and AUC depend on the order alone
    values, order = torch.unique(torch.cat([members, nonmembers]).double(), return_inverse=True)
    preds = order.double() / max(1, len(values) - 1)
    target = torch.cat([torch.ones(len(members)), torch.zeros(len(nonmembers))]).long()
    gen = torch.Generator().manual_seed(seed)
    aucs, tprs = [], []
    for _ in range(bootstraps):
        m = torch.randint(0, len(members), (len(members),), generator=gen)
        n = torch.randint(0, len(nonmembers), (len(nonmembers),), generator=gen) + len(members)
        idx = torch.cat([m, n])
        aucs.append(float(binary_auroc(preds[idx], target[idx])))
        tprs.append(_tpr_at(preds[idx], target[idx], FPR))

    def interval(values):
        return torch.tensor(values).quantile(torch.tensor([0.025, 0.975])).tolist()

    return {"auc": float(binary_auroc(preds, target)), "auc_95": interval(aucs),
            "tpr_at_1fpr": _tpr_at(preds, target, FPR), "tpr_at_1fpr_95": interval(tprs),
            "members": len(members), "nonmembers": len(nonmembers)}


def efficacy(forget: torch.Tensor, members: torch.Tensor, nonmembers: torch.Tensor) -> float:
    """MIA efficacy: the share of `forget` (the forget class's training images' scores) called
    non-members by the threshold that best separates the retained classes' `members` (training
    images) from their `nonmembers` (held-out images), by balanced accuracy."""
    candidates = torch.cat([members, nonmembers]).sort().values
    best, threshold = -1.0, float(candidates[0])
    for c in candidates.tolist():
        accuracy = ((members >= c).float().mean() + (nonmembers < c).float().mean()) / 2
        if accuracy > best:
            best, threshold = float(accuracy), c
    return float((forget < threshold).float().mean())
