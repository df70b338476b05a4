"""DiT's training loss, and the variants the base methods' papers use.

DiT's loss is the epsilon MSE plus the learned-variance VLB term; the variants are pixel-summed
reductions, SalUn's matched and guided losses, and Selective Amnesia's sum over timesteps."""
from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel


def _normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_nll(x, mean, log_scale):
    """-log p(x), elementwise, for data in [-1, 1] quantised to 256 levels under
    N(mean, exp(log_scale)^2)."""
    # no argument validation: a diverged model's NaN must reach the loss, where the loop's
    # divergence check names it, instead of raising in here
    normal = torch.distributions.Normal(0.0, 1.0, validate_args=False)
    inv_std = torch.exp(-log_scale)
    cdf_plus = normal.cdf(inv_std * (x - mean + 1 / 255))
    cdf_min = normal.cdf(inv_std * (x - mean - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return -torch.where(x < -0.999, log_cdf_plus,
                        torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _pixels(x: torch.Tensor, reduction: str) -> int:
    """The factor that turns a per-pixel mean into `reduction`: 1 for "mean", C*H*W for "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown loss reduction {reduction!r}: use 'mean' or 'sum'")
    return 1 if reduction == "mean" else x[0].numel()


class DiTLoss:
    """DiT's training loss: epsilon MSE, plus the learned-variance VLB term when the model has one.

    The VLB term holds the predicted mean frozen. Called as `loss(model, (x0, labels))` or
    `loss(model, (x0, labels, seeds))`; with per-sample seeds a sample's timestep and noise depend
    on its seed alone, so a batch split across processes is noised exactly as when whole. `draws`
    and `of_draws` split a call into its random draws and a pure function of them (per-sample
    gradients). Label dropout is applied to the batches beforehand (`drop_labels`). With
    `antithetic`, the second half of a batch's timesteps mirrors the first (`mirrored`), as in the
    training step of SalUn's and SA's DDPM code.

    Args:
        scheduler: DiT's diffusion (its betas).
        antithetic: mirror each batch's timesteps.
    """

    def __init__(self, scheduler: DDPMScheduler, antithetic: bool = False):
        self.antithetic = antithetic
        betas = scheduler.betas.double()
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        self.num_timesteps = len(betas)
        self.sqrt_ac = ac.sqrt().float()
        self.sqrt_1m_ac = (1 - ac).sqrt().float()
        self.log_betas = betas.log().float()
        self.post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])).float()
        self.coef_x0 = (betas * ac_prev.sqrt() / (1 - ac)).float()
        self.coef_xt = ((1 - ac_prev) * alphas.sqrt() / (1 - ac)).float()

    @staticmethod
    def _at(values, t, like):
        return values.to(like.device)[t].view(-1, *([1] * (like.dim() - 1)))

    def draws(self, model, batch) -> tuple[torch.Tensor, ...]:
        """(x0, labels, t, noise) of a batch on the model's device: every random draw of its loss.

        t is uniform over the training timesteps (drawn from each sample's seed, where the batch has
        seeds); with them made, `of_draws` is a pure function of tensors (what torch.func's
        transforms need)."""
        x0, labels, *seeds = batch
        x0 = x0.to(model.device, model.dtype)
        if seeds:
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[0]]
            t = torch.cat([torch.randint(0, self.num_timesteps, (1,), generator=g)
                           for g in gens]).to(x0.device)
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g)
                                 for g in gens]).to(x0.device, x0.dtype)
        else:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
            noise = torch.randn_like(x0)
        return x0, labels.to(x0.device), self.mirrored(t) if self.antithetic else t, noise

    def mirrored(self, t: torch.Tensor) -> torch.Tensor:
        """Antithetic timesteps: `t`'s first h = n // 2 + 1, then T - 1 - t of its first n - h."""
        half = len(t) // 2 + 1
        return torch.cat([t[:half], self.num_timesteps - 1 - t[:len(t) - half]])

    def _xt(self, x0, t, noise):
        """x_t: x0 noised to timestep t with the given noise."""
        return self._at(self.sqrt_ac, t, x0) * x0 + self._at(self.sqrt_1m_ac, t, x0) * noise

    def _noised(self, model, batch):
        """(x0, labels, t, noise, x_t) for a batch (`draws`, and x_t)."""
        x0, labels, t, noise = self.draws(model, batch)
        return x0, labels, t, noise, self._xt(x0, t, noise)

    def __call__(self, model: DiTTransformer2DModel, batch, reduce: bool = True,
                 reduction: str = "mean", variance: bool = True) -> torch.Tensor:
        """DiT's loss per sample, averaged over the batch.

        Args:
            model: the DiT.
            batch: (x0, labels) or (x0, labels, per-sample seeds).
            reduce: average over the batch; False: one loss per sample.
            reduction: "mean": averaged over pixels, as DiT trains; "sum": summed over pixels, as
                the DDPM code of SalUn and Selective Amnesia (a pixel-count larger).
            variance: False: the epsilon MSE alone, without the learned-variance term (that DDPM
                code's loss).

        Raises:
            ValueError: an unknown `reduction`."""
        return self.of_draws(model, *self.draws(model, batch), reduce=reduce, reduction=reduction,
                             variance=variance)

    def of_draws(self, model, x0, labels, t, noise, reduce: bool = True, reduction: str = "mean",
                 variance: bool = True) -> torch.Tensor:
        """The loss of the batch that `draws` came from, as a pure function of those tensors.

        No generator and no query of the model's device, which is only called (so torch.func can
        vmap it, e.g. per-sample gradients); the other arguments are `__call__`'s."""
        xt = self._xt(x0, t, noise)
        out = model(xt, t, class_labels=labels).sample
        channels = x0.shape[1]
        eps = out[:, :channels]
        loss = ((eps - noise) ** 2).flatten(1).mean(1)
        if variance and out.shape[1] == 2 * channels:
            loss = loss + self._vb(eps.detach(), out[:, channels:], x0, xt, t)
        loss = loss * _pixels(x0, reduction)
        return loss.mean() if reduce else loss

    def match(self, model: DiTTransformer2DModel, batch, target_labels: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
        """SalUn's forget loss: the MSE of the epsilon predicted for the batch's labels.

        Its target is the frozen epsilon predicted for `target_labels`, at the same x_t and t."""
        x0, labels, t, _, xt = self._noised(model, batch)
        channels = x0.shape[1]
        with torch.no_grad():
            target = model(xt, t, class_labels=target_labels.to(model.device)).sample[:, :channels]
        pred = model(xt, t, class_labels=labels).sample[:, :channels]
        return (((pred - target) ** 2).flatten(1).mean(1) * _pixels(x0, reduction)).mean()

    def guided(self, model: DiTTransformer2DModel, batch, guidance: float) -> torch.Tensor:
        """SalUn's saliency loss: (noise - eps_guided)^2, summed over pixels, mean over samples.

        eps_guided = uncond + guidance * (cond - uncond), and timesteps are antithetic (t, then
        T - 1 - t for the second half)."""
        x0, labels, t, noise = self.draws(model, batch)
        t = self.mirrored(t)
        xt = self._xt(x0, t, noise)
        channels = x0.shape[1]
        null = torch.full_like(labels, model.config.num_embeds_ada_norm)
        out = model(torch.cat([xt, xt]), torch.cat([t, t]),
                    class_labels=torch.cat([labels, null])).sample
        cond, uncond = out[:, :channels].chunk(2)
        eps = uncond + guidance * (cond - uncond)
        return ((eps - noise) ** 2).flatten(1).sum(1).mean()

    def timestep_sum(self, model: DiTTransformer2DModel, batch, timesteps: int, chunk: int,
                     label_dropout: float = 0.0):
        """Selective Amnesia's Fisher loss of one sample, yielded in chunks of `chunk` timesteps.

        The epsilon loss summed over pixels and over all T timesteps, each with its own noise; a
        caller back-propagates it piece by piece. With `timesteps` K < T, K stratified timesteps
        (one uniform draw in each of K equal strata) stand for all T, each weighted T / K: the
        summed gradient is then unbiased (its square, the Fisher, gains the estimate's variance).
        `label_dropout`: each timestep's label is the null class with this probability (SA's
        `save_fim` runs the model in train mode), drawn after the timesteps and noise from the
        sample's generator. More than one sample raises ValueError."""
        x0, labels, *seeds = batch
        if len(x0) != 1:
            raise ValueError("timestep_sum takes one sample at a time")
        gen = torch.Generator().manual_seed(int(seeds[0][0]) if seeds else 0)
        if timesteps >= self.num_timesteps:
            t, weight = torch.arange(self.num_timesteps), 1.0
        else:
            edges = torch.arange(timesteps) * self.num_timesteps / timesteps
            t = (edges + torch.rand(timesteps, generator=gen) * self.num_timesteps
                 / timesteps).long()
            weight = self.num_timesteps / timesteps
        noise = torch.randn((len(t), *x0.shape[1:]), generator=gen)
        labels = labels.expand(len(t))
        if label_dropout:
            labels = torch.where(torch.rand(len(t), generator=gen) < label_dropout,
                                 model.config.num_embeds_ada_norm, labels)
        x0, labels = x0.to(model.device, model.dtype), labels.to(model.device)
        channels = x0.shape[1]
        for i in range(0, len(t), chunk):
            tc, nc = t[i:i + chunk].to(x0.device), noise[i:i + chunk].to(x0.device, x0.dtype)
            xt = self._xt(x0, tc, nc)
            eps = model(xt, tc, class_labels=labels[i:i + chunk]).sample[:, :channels]
            yield weight * ((eps - nc) ** 2).sum()

    def _vb(self, eps, v, x0, xt, t):
        """The variational bound term in bits per dimension, mean held fixed (DiT, iDDPM)."""
        pred_x0 = (xt - self._at(self.sqrt_1m_ac, t, xt) * eps) / self._at(self.sqrt_ac, t, xt)
        c0, ct = self._at(self.coef_x0, t, xt), self._at(self.coef_xt, t, xt)
        min_log, max_log = self._at(self.post_log_var, t, xt), self._at(self.log_betas, t, xt)
        frac = (v + 1) / 2
        model_log_var = frac * max_log + (1 - frac) * min_log
        model_mean = c0 * pred_x0 + ct * xt
        kl = _normal_kl(c0 * x0 + ct * xt, min_log, model_mean, model_log_var).flatten(1).mean(1)
        nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)
