"""DiT as diffusers' DiTTransformer2DModel: construction, loading, label dropout, the original DiT's embedders,
timestep frequencies and LayerNorm eps, and DiT's training loss."""
from __future__ import annotations

import contextlib
import copy
import math

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding


def num_classes(model: DiTTransformer2DModel) -> int:
    """Number of real classes; the label embedding's extra row (this index) is the null class of guidance."""
    return model.config.num_embeds_ada_norm


def disable_builtin_label_dropout(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Turn off diffusers' in-model label dropout (p = 0.1 in train mode, drawn anew in EVERY block).

    The original DiT drops a sample's label once for the whole network; `drop_labels` does that instead, with an
    explicit probability per kind of batch, so that gradient ascent never silently hits the null class that guidance
    uses for every class.
    """
    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return model


def build_dit(*, num_classes: int, sample_size: int, in_channels: int, patch_size: int, layers: int, heads: int,
              head_dim: int, learn_sigma: bool = True) -> DiTTransformer2DModel:
    """A class-conditional DiT with the null-class row for classifier-free guidance."""
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=in_channels * (2 if learn_sigma else 1), num_layers=layers, sample_size=sample_size,
        patch_size=patch_size, num_embeds_ada_norm=num_classes)
    return disable_builtin_label_dropout(model)


def load_dit(path: str) -> DiTTransformer2DModel:
    """Load a transformer saved with `save_pretrained`."""
    return disable_builtin_label_dropout(DiTTransformer2DModel.from_pretrained(path))


def embedders(model: DiTTransformer2DModel) -> list[torch.nn.Module]:
    """Each block's timestep + class embedder (`norm1.emb`); the final layer uses block 0's."""
    return [block.norm1.emb for block in model.transformer_blocks]


def embedders_tied(model: DiTTransformer2DModel) -> bool:
    """Whether every block uses block 0's embedder (one shared module, as the original DiT); never with one block."""
    first, *rest = embedders(model)
    return bool(rest) and all(e is first for e in rest)


def embedder_copies_equal(model: DiTTransformer2DModel) -> bool:
    """Whether every block's embedder holds block 0's values: true of a checkpoint converted from the original DiT
    (its one embedder copied into each block), false of a model trained in diffusers layout (blocks initialised
    independently)."""
    first, *rest = [e.state_dict() for e in embedders(model)]
    return all(all(torch.equal(v, other[k]) for k, v in first.items()) for other in rest)


def tie_embedders(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Make every block use block 0's embedder: one parameter per weight, gradients summed over blocks (the original
    DiT). `named_parameters()` then lists each shared weight once, so Fisher diagonals, masks and optimizer states
    follow without change; `state_dict()` still lists it under every block's name."""
    first = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = first
    return model


def untie_embedders(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Give every block its own copy of a shared embedder (equal values, trained separately from now on)."""
    if embedders_tied(model):
        for block in model.transformer_blocks[1:]:
            block.norm1.emb = copy.deepcopy(block.norm1.emb)
    return model


@contextlib.contextmanager
def separate_copies(model: DiTTransformer2DModel):
    """Within the block, a tied model holds equal but separate copies, for writers that refuse shared memory
    (safetensors, `save_pretrained`): the files are diffusers' layout with equal copies. The tie is restored after."""
    shared = embedders(model)
    untie_embedders(model)
    try:
        yield model
    finally:
        for block, emb in zip(model.transformer_blocks, shared):
            block.norm1.emb = emb


def set_timestep_shift(model: DiTTransformer2DModel, shift: int) -> DiTTransformer2DModel:
    """Timestep frequencies exp(-ln(10000) i / (128 - shift)): the original DiT divides by 128 (shift 0); diffusers'
    `CombinedTimestepLabelEmbeddings` builds shift 1. A model samples well only with the frequencies it was trained
    with."""
    for emb in embedders(model):
        emb.time_proj.downscale_freq_shift = shift
    return model


def timestep_shift(model: DiTTransformer2DModel) -> int:
    return int(model.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift)


def set_norm_eps(model: DiTTransformer2DModel, eps: float) -> DiTTransformer2DModel:
    """The eps of the one LayerNorm per block that diffusers builds from `config.norm_eps` (norm3, before the MLP;
    the attention-side and final LayerNorms are hard-coded to 1e-6, as in the original, where every LayerNorm uses
    1e-6). Written into the config too, so that `save_pretrained` records it."""
    for block in model.transformer_blocks:
        block.norm3.eps = eps
    model.register_to_config(norm_eps=eps)
    return model


def norm_eps(model: DiTTransformer2DModel) -> float:
    return float(model.transformer_blocks[0].norm3.eps)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters, as the original DiT counts them (DiT-XL/2: 674.8M tied, 749.8M with 28 embedder copies;
    the fixed positional embedding is a buffer in diffusers, not counted)."""
    return sum(p.numel() for p in model.parameters())  # parameters() lists a shared parameter once


EMBEDDERS = {True: "tied (one shared, as the original DiT)", False: "per block (as trained)"}


def describe_model(model: DiTTransformer2DModel) -> dict:
    """The embedders, timestep frequencies and LayerNorm eps a model runs with, and its parameter count."""
    return {"embedders": EMBEDDERS[embedders_tied(model)], "timestep_shift": timestep_shift(model),
            "norm_eps": norm_eps(model), "model_parameters": count_parameters(model)}


def drop_labels(labels: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None = None):
    """Replace each label by the null class with probability p (DiT's classifier-free-guidance training)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, null_class, labels)


def make_scheduler(num_train_timesteps: int = 1000, timestep_spacing: str = "linspace") -> DDPMScheduler:
    """DiT's diffusion: linear betas 1e-4..0.02, sampled with the model's learned variance.

    "linspace" spacing keeps round(i (T - 1) / (n - 1)), the steps of DiT's `space_timesteps(T, "n")` (from t = 999);
    diffusers' default "leading" starts at 996 for 250 steps. The scheduler re-derives each step's beta from
    alphas_cumprod at the kept steps, as DiT's respacing does."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, variance_type="learned_range", clip_sample=False,
                         timestep_spacing=timestep_spacing)


def learns_sigma(model: DiTTransformer2DModel) -> bool:
    """Whether the model predicts its variance too (DiT's learn_sigma: twice its input channels out); without, it
    samples with a fixed variance and trains on the epsilon MSE alone."""
    return (model.config.out_channels or model.config.in_channels) == 2 * model.config.in_channels


def fixed_variance(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The same schedule with the fixed posterior variance ("fixed_small"), for a model that predicts no variance."""
    return DDPMScheduler.from_config({**scheduler.config, "variance_type": "fixed_small"})


def _normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_nll(x, mean, log_scale):
    """-log p(x) for data in [-1, 1] quantised to 256 levels under N(mean, exp(log_scale)^2), elementwise."""
    normal = torch.distributions.Normal(0.0, 1.0)
    inv_std = torch.exp(-log_scale)
    cdf_plus = normal.cdf(inv_std * (x - mean + 1 / 255))
    cdf_min = normal.cdf(inv_std * (x - mean - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return -torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _pixels(x: torch.Tensor, reduction: str) -> int:
    """The factor that turns a per-pixel mean into the `reduction` asked for: 1 for "mean", C*H*W for "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown loss reduction {reduction!r}: use 'mean' or 'sum'")
    return 1 if reduction == "mean" else x[0].numel()


class DiTLoss:
    """DiT's training loss: epsilon MSE, plus the learned-variance VLB term (mean frozen) when the model predicts sigma.

    Called as `loss(model, (x0, labels))` or `loss(model, (x0, labels, seeds))`; with per-sample seeds a sample's
    timestep and noise depend on its seed alone, so a batch split across processes is noised exactly as when whole.
    Label dropout is applied to the batches beforehand (`drop_labels`).
    """

    def __init__(self, scheduler: DDPMScheduler):
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

    def _noised(self, model, batch):
        """(x0, labels, t, noise, x_t) for a batch, with t uniform over the training timesteps."""
        x0, labels, *seeds = batch
        x0 = x0.to(model.device, model.dtype)
        if seeds:
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[0]]
            t = torch.cat([torch.randint(0, self.num_timesteps, (1,), generator=g) for g in gens]).to(x0.device)
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0.device, x0.dtype)
        else:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
            noise = torch.randn_like(x0)
        xt = self._at(self.sqrt_ac, t, x0) * x0 + self._at(self.sqrt_1m_ac, t, x0) * noise
        return x0, labels.to(model.device), t, noise, xt

    def __call__(self, model: DiTTransformer2DModel, batch, reduce: bool = True,
                 reduction: str = "mean") -> torch.Tensor:
        """DiT's loss per sample, averaged over the batch (`reduce`). `reduction` "mean": averaged over pixels, as DiT
        trains; "sum": summed over pixels, as the DDPM code of SalUn and Selective Amnesia (a pixel-count larger)."""
        x0, labels, t, noise, xt = self._noised(model, batch)
        out = model(xt, t, class_labels=labels).sample
        channels = x0.shape[1]
        eps = out[:, :channels]
        loss = ((eps - noise) ** 2).flatten(1).mean(1)
        if out.shape[1] == 2 * channels:
            loss = loss + self._vb(eps.detach(), out[:, channels:], x0, xt, t)
        loss = loss * _pixels(x0, reduction)
        return loss.mean() if reduce else loss

    def match(self, model: DiTTransformer2DModel, batch, target_labels: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
        """MSE between the epsilon predicted for the batch's labels and the frozen epsilon predicted for
        `target_labels`, at the same x_t and t (SalUn's forget loss)."""
        x0, labels, t, _, xt = self._noised(model, batch)
        channels = x0.shape[1]
        with torch.no_grad():
            target = model(xt, t, class_labels=target_labels.to(model.device)).sample[:, :channels]
        pred = model(xt, t, class_labels=labels).sample[:, :channels]
        return (((pred - target) ** 2).flatten(1).mean(1) * _pixels(x0, reduction)).mean()

    def guided(self, model: DiTTransformer2DModel, batch, guidance: float) -> torch.Tensor:
        """SalUn's saliency loss: (eps - eps_guided)^2 summed over pixels, averaged over the batch, where eps_guided =
        uncond + guidance * (cond - uncond) and timesteps are antithetic (t, then T - 1 - t for the second half)."""
        x0, labels, t, noise, _ = self._noised(model, batch)
        half = len(t) // 2 + 1
        t = torch.cat([t[:half], self.num_timesteps - 1 - t[:len(t) - half]])
        xt = self._at(self.sqrt_ac, t, x0) * x0 + self._at(self.sqrt_1m_ac, t, x0) * noise
        channels = x0.shape[1]
        null = torch.full_like(labels, model.config.num_embeds_ada_norm)
        out = model(torch.cat([xt, xt]), torch.cat([t, t]), class_labels=torch.cat([labels, null])).sample
        cond, uncond = out[:, :channels].chunk(2)
        eps = uncond + guidance * (cond - uncond)
        return ((eps - noise) ** 2).flatten(1).sum(1).mean()

    def timestep_sum(self, model: DiTTransformer2DModel, batch, timesteps: int, chunk: int):
        """Selective Amnesia's Fisher loss of one sample: the epsilon loss summed over pixels and over all T timesteps,
        each with its own noise; yielded in chunks of timesteps, so that a caller back-propagates piece by piece.

        With `timesteps` K < T, K stratified timesteps (one uniform draw in each of K equal strata) stand for all T,
        each weighted T / K: the summed gradient is then unbiased (its square, the Fisher, gains the estimate's
        variance)."""
        x0, labels, *seeds = batch
        if len(x0) != 1:
            raise ValueError("timestep_sum takes one sample at a time")
        gen = torch.Generator().manual_seed(int(seeds[0][0]) if seeds else 0)
        if timesteps >= self.num_timesteps:
            t, weight = torch.arange(self.num_timesteps), 1.0
        else:
            edges = torch.arange(timesteps) * self.num_timesteps / timesteps
            t = (edges + torch.rand(timesteps, generator=gen) * self.num_timesteps / timesteps).long()
            weight = self.num_timesteps / timesteps
        noise = torch.randn((len(t), *x0.shape[1:]), generator=gen)
        x0, labels = x0.to(model.device, model.dtype), labels.to(model.device)
        channels = x0.shape[1]
        for i in range(0, len(t), chunk):
            tc, nc = t[i:i + chunk].to(x0.device), noise[i:i + chunk].to(x0.device, x0.dtype)
            xt = self._at(self.sqrt_ac, tc, x0) * x0 + self._at(self.sqrt_1m_ac, tc, x0) * nc
            eps = model(xt, tc, class_labels=labels.expand(len(tc))).sample[:, :channels]
            yield weight * ((eps - nc) ** 2).sum()

    def _vb(self, eps, v, x0, xt, t):
        """Variational bound term in bits per dimension, with the predicted mean held fixed (DiT / improved DDPM)."""
        pred_x0 = (xt - self._at(self.sqrt_1m_ac, t, xt) * eps) / self._at(self.sqrt_ac, t, xt)
        c0, ct = self._at(self.coef_x0, t, xt), self._at(self.coef_xt, t, xt)
        min_log, max_log = self._at(self.post_log_var, t, xt), self._at(self.log_betas, t, xt)
        frac = (v + 1) / 2
        model_log_var = frac * max_log + (1 - frac) * min_log
        model_mean = c0 * pred_x0 + ct * xt
        kl = _normal_kl(c0 * x0 + ct * xt, min_log, model_mean, model_log_var).flatten(1).mean(1)
        nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)
