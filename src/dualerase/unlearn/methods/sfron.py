"""SFR-on (Huang et al., 2024): gradient ascent on weights salient for forget, not retain, data."""
from dualerase.unlearn.methods.ga import GradientAscent
from dualerase.unlearn.saliency import fisher_diagonal, sfron_mask


class SFRon(GradientAscent):
    """GA's forget loss with SFR-on's Fisher-ratio mask on forget gradients.

    The mask keeps a weight where (F_f + eps) / (F_r + eps) >= gamma. Its state is the two Fisher
    diagonals, saved with the mask.
    """

    name = "sfron"

    def prepare(self, model, forget, retain, progress=True, partial=None):
        """The Fisher diagonals F_f and F_r of `grad_samples` single samples each, and their mask.

        See `Method.prepare`; the diagonals go `fisher_batch` samples per vmapped pass.
        """
        n, chunk = self.cfg.grad_samples, self.cfg.fisher_batch
        self.fisher_forget = fisher_diagonal(model, self.loss, forget(1), n, desc="fisher forget",
                                             progress=progress, partial=partial, chunk=chunk)
        self.fisher_retain = fisher_diagonal(model, self.loss, retain(1), n, desc="fisher retain",
                                             progress=progress, partial=partial, chunk=chunk)
        return sfron_mask(self.fisher_forget, self.fisher_retain, self.cfg.gamma)

    def state(self):
        """Both Fisher diagonals, under "fisher_forget." and "fisher_retain." names."""
        return {**{f"fisher_forget.{n}": f for n, f in self.fisher_forget.items()},
                **{f"fisher_retain.{n}": f for n, f in self.fisher_retain.items()}}

    def load_state(self, tensors, original):
        """Restore both Fisher diagonals from `state`'s tensors."""
        self.fisher_forget = {n.split(".", 1)[1]: f for n, f in tensors.items()
                              if n.startswith("fisher_forget.")}
        self.fisher_retain = {n.split(".", 1)[1]: f for n, f in tensors.items()
                              if n.startswith("fisher_retain.")}
