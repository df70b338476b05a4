"""Selective Amnesia (Heng & Soh, 2023): map the forget class to noise, replay the rest, and hold weights by EWC."""
import torch

from erase.methods.base import Method
from erase.saliency import fisher_diagonal


class SelectiveAmnesia(Method):
    """Forget loss: the training loss on surrogate images (uniform noise) labelled c_f. Retain loss:
    replay_weight * training loss on samples the ORIGINAL model generated for other classes, plus the EWC penalty
    ewc_lambda * sum_i F_i (theta_i - theta*_i)^2 with F the Fisher diagonal of the original model on those samples.
    SA's single loss is split across the two steps: surrogate in the forget step, replay and EWC in the retain step."""

    name = "sa"
    forget_data = "surrogate"
    retain_data = "replay"

    def prepare(self, model, forget_samples, retain_samples, progress=True, partial=None):
        self.fisher = fisher_diagonal(model, self.loss, retain_samples, self.cfg.grad_samples, desc="fisher replay",
                                      progress=progress, partial=partial)
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return None

    def state(self):
        return {f"fisher.{n}": f for n, f in self.fisher.items()}

    def load_state(self, tensors, original):
        self.fisher = {n[len("fisher."):]: f for n, f in tensors.items()}
        self.anchor = {n: p.detach().clone() for n, p in original.named_parameters() if p.requires_grad}

    def ewc_penalty(self, model) -> torch.Tensor:
        """sum_i F_i (theta_i - theta*_i)^2 over every trainable weight."""
        terms = [(self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
                 for n, p in model.named_parameters() if p.requires_grad]
        return torch.stack(terms).sum()

    def forget_loss(self, model, batch):
        return self.loss(model, batch)

    def retain_loss(self, model, batch):
        return self.cfg.replay_weight * self.loss(model, batch) + self.cfg.ewc_lambda * self.ewc_penalty(model)
