"""SFR-on (Huang et al., 2024): gradient ascent restricted to weights salient for forget data but not retain data."""
from dualerase.unlearn.methods.ga import GradientAscent
from dualerase.unlearn.saliency import fisher_diagonal, sfron_mask


class SFRon(GradientAscent):
    """GA forget loss with the Fisher-ratio mask (F_f + eps) / (F_r + eps) >= gamma on forget gradients. Its state is
    the two Fisher diagonals, saved with the mask."""

    name = "sfron"

    def prepare(self, model, forget, retain, progress=True, partial=None):
        n, chunk = self.cfg.grad_samples, self.cfg.fisher_batch
        self.fisher_forget = fisher_diagonal(model, self.loss, forget(1), n, desc="fisher forget",
                                             progress=progress, partial=partial, chunk=chunk)
        self.fisher_retain = fisher_diagonal(model, self.loss, retain(1), n, desc="fisher retain",
                                             progress=progress, partial=partial, chunk=chunk)
        return sfron_mask(self.fisher_forget, self.fisher_retain, self.cfg.gamma)

    def state(self):
        return {**{f"fisher_forget.{n}": f for n, f in self.fisher_forget.items()},
                **{f"fisher_retain.{n}": f for n, f in self.fisher_retain.items()}}

    def load_state(self, tensors, original):
        self.fisher_forget = {n.split(".", 1)[1]: f for n, f in tensors.items() if n.startswith("fisher_forget.")}
        self.fisher_retain = {n.split(".", 1)[1]: f for n, f in tensors.items() if n.startswith("fisher_retain.")}
