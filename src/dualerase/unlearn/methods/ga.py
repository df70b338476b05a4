"""GA: gradient ascent on the training loss of forget data."""
from dualerase.unlearn.methods.base import Method


class GradientAscent(Method):
    """Maximise the forget data's training loss; the retain steps keep the model alive."""

    name = "ga"

    def forget_loss(self, model, batch):
        """The negated training loss of the forget batch (see `Method.forget_loss`)."""
        return -self.loss(model, batch, reduction=self.forget_reduction,
                          variance=self.forget_variance)
