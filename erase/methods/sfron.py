"""SFR-on (Huang et al., 2024): gradient ascent restricted to weights salient for forget data but not retain data."""
from erase.methods.ga import GradientAscent
from erase.saliency import fisher_diagonal, sfron_mask


class SFRon(GradientAscent):
    """GA forget loss with the Fisher-ratio mask (F_f + eps) / (F_r + eps) >= gamma on forget gradients."""

    name = "sfron"

    def prepare(self, model, forget_samples, retain_samples, progress=True):
        n = self.cfg.grad_samples
        f_forget = fisher_diagonal(model, self.loss, forget_samples, n, desc="fisher forget", progress=progress)
        f_retain = fisher_diagonal(model, self.loss, retain_samples, n, desc="fisher retain", progress=progress)
        return sfron_mask(f_forget, f_retain, self.cfg.gamma)
