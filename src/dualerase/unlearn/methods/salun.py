"""SalUn (Fan et al., 2024): relabel the forget class, only in weights salient for forgetting."""
import math

import torch

from dualerase.unlearn.methods.base import Method
from dualerase.unlearn.saliency import gradient_sum, top_fraction_mask


class SalUn(Method):
    """Relabel forget images as a pseudo-class, in the weights salient for forgetting only.

    Forget loss MSE(eps(x_t, t, c_f), stopgrad(eps(x_t, t, c_pseudo))) on forget images (mean over
    pixels); retain loss the training loss summed over pixels, weighted by alpha; both steps masked.
    Originally one joint step of forget + 1e-3 * retain with one Adam, the whole gradient clipped
    then masked: what the shared mode runs.

    Mask: per batch of `saliency_batch` forget images (model in eval mode, antithetic timesteps) the
    gradient of the pixel-summed denoising loss under the GUIDED prediction, clipped to norm 1;
    summed over batches; the top `top_p` share of |sum| by exact rank.
    """

    name = "salun"
    alpha_weights = "retain"
    joint = True
    clip_then_mask = True
    retain_reduction = "sum"
    published = {"erase.alpha": 1e-3, "erase.alpha_schedule": "constant", "erase.mask_retain": True}

    def pseudo_labels(self, labels: torch.Tensor,
                      seeds: torch.Tensor | None = None) -> torch.Tensor:
        """The class forget images are pushed towards: `pseudo_class`, or else (c_f + 1) mod K.

        Each label is dropped to the null class with probability `pseudo_label_dropout` (SalUn's
        target pass in train mode), drawn apart from the prediction's dropout.

        Args:
            labels: the forget batch's labels (only their shape and device are used).
            seeds: the batch's per-sample noise seeds; the dropout draws come from each seed moved
                into a range the noise seeds never use, or (None) from torch's global generator.

        Returns:
            The target labels, shaped as `labels`.
        """
        pseudo = self.cfg.pseudo_class
        if pseudo is None:
            pseudo = (self.forget_class + 1) % self.num_classes
        out = torch.full_like(labels, pseudo)
        if self.cfg.pseudo_label_dropout:
            draws = torch.rand(len(labels)) if seeds is None else torch.cat(
                [torch.rand(1, generator=torch.Generator().manual_seed(int(s) | 1 << 62))
                 for s in seeds])
            out = torch.where(draws.to(out.device) < self.cfg.pseudo_label_dropout,
                              self.num_classes, out)
        return out

    def forget_loss(self, model, batch):
        """The distance of the forget batch's prediction to the frozen pseudo-class prediction."""
        seeds = batch[2] if len(batch) > 2 else None
        return self.loss.match(model, batch, self.pseudo_labels(batch[1], seeds),
                               reduction=self.forget_reduction)

    def prepare(self, model, forget, retain, progress=True, partial=None):
        """The saliency mask: the top `top_p` share of |summed clipped guided-loss gradients|.

        See `Method.prepare`; it reads about `grad_samples` forget images.
        """
        size = self.cfg.saliency_batch
        guidance = self.cfg.saliency_guidance
        grads = gradient_sum(model, lambda m, b: self.loss.guided(m, b, guidance), forget(size),
                             math.ceil(self.cfg.grad_samples / size), clip=1.0,
                             desc="salun saliency", progress=progress, partial=partial)
        return top_fraction_mask({n: g.abs() for n, g in grads.items()}, self.cfg.top_p)
