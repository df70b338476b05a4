"""SalUn (Fan et al., 2024): relabel the forget class as another class, only in weights salient for forgetting."""
import torch

from erase.methods.base import Method
from erase.saliency import gradient_sum, top_fraction_mask


class SalUn(Method):
    """Forget loss MSE(eps(x_t, t, c_f), stopgrad(eps(x_t, t, c_pseudo))) on forget images; retain loss weighted by
    alpha; mask = the global top `top_p` share of |sum of forget-loss gradients|. Originally one joint step of
    forget + alpha * retain with one Adam (alpha 1e-3), which is what the shared mode runs."""

    name = "salun"
    alpha_weights = "retain"
    joint = True

    def pseudo_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The class forget images are pushed towards: `pseudo_class`, or (c_f + 1) mod K as in SalUn."""
        pseudo = self.cfg.pseudo_class
        if pseudo is None:
            pseudo = (self.forget_class + 1) % self.num_classes
        return torch.full_like(labels, pseudo)

    def forget_loss(self, model, batch):
        return self.loss.match(model, batch, self.pseudo_labels(batch[1]))

    def prepare(self, model, forget_samples, retain_samples, progress=True, partial=None):
        grads = gradient_sum(model, self.loss, forget_samples, self.cfg.grad_samples, desc="salun saliency",
                             progress=progress, partial=partial)
        return top_fraction_mask({n: g.abs() for n, g in grads.items()}, self.cfg.top_p)
