"""Selective Amnesia (Heng & Soh, 2023): the forget class to noise, replay, EWC on the weights."""
import torch

from dualerase.unlearn.methods.base import Method
from dualerase.unlearn.saliency import fisher_diagonal


class SelectiveAmnesia(Method):
    """Map the forget class to uniform noise; replay the other classes and hold weights by EWC.

    Forget loss: the training loss on surrogate images (uniform noise) labelled c_f. Retain loss:
    replay_weight * training loss on samples the ORIGINAL model generated for other classes, plus
    the EWC penalty ewc_lambda * sum_i F_i (theta_i - theta*_i)^2. Both data losses are summed over
    pixels, as in SA's code.

    F is SA's Fisher: per replay sample, the gradient of the pixel-summed epsilon loss summed over
    all timesteps, squared, averaged over samples (`fisher_timesteps` < T: a stratified subsample,
    rescaled). Its samples are replays of the retained classes, or (`fisher_classes` all, as SA's
    save_fim) of every class, the forget class included; each timestep's label is dropped to the
    null class with probability `fisher_label_dropout`.

    SA's single loss is one step (what the shared mode runs); the dual mode splits it: surrogate in
    the forget step, replay and EWC in the retain step. Replay batches get no label dropout and the
    whole gradient is clipped to 1.
    """

    name = "sa"
    joint = True
    forget_reduction = "sum"
    retain_reduction = "sum"
    variance_term = "retain"  # the surrogate is noise: its variance is not the data's
    published = {"erase.alpha_schedule": "constant", "erase.retain_clip": 1.0,
                 "erase.retain_label_dropout": 0.0}

    def data(self, source):
        """Surrogate forget images and replayed retain images.

        Args:
            source: what the pipeline offers (`DataSource`).

        Returns:
            (uniform noise labelled c_f, as many as the real forget images; their labels;
            `replay_per_class` samples of the original model for each other class; their labels).
        """
        real = source.real
        others = torch.tensor([c for c in range(self.num_classes) if c != self.forget_class])
        replay_labels = others.repeat_interleave(self.cfg.replay_per_class)
        # replays of the forget class too, from a stream of their own
        if self.cfg.fisher_classes == "all":
            self.forget_replay = source.replay(
                torch.full((self.cfg.replay_per_class,), self.forget_class), stream="fisher_replay")
        return (source.surrogate(real.forget_x), real.forget_y, source.replay(replay_labels),
                replay_labels)

    def fisher_samples(self, retain):
        """SA's Fisher samples: the retain stream's single replays.

        With `fisher_classes` all, each one is swapped for a replay of the forget class with
        probability 1/K (every class equally often), drawn from its seed; with `fisher_unit_range`
        its image is mapped from [-1, 1] to [0, 1].
        """
        for batch in retain:
            if self.cfg.fisher_classes == "all":
                x, y, seeds = batch
                gen = torch.Generator().manual_seed(int(seeds[0]) ^ 0x5A5A)
                if torch.rand(1, generator=gen) < 1 / self.num_classes:
                    i = torch.randint(0, len(self.forget_replay), (1,), generator=gen)
                    batch = self.forget_replay[i], torch.full_like(y, self.forget_class), seeds
            if self.cfg.fisher_unit_range:
                batch = ((batch[0] + 1) / 2, *batch[1:])
            yield batch

    def prepare(self, model, forget, retain, progress=True, partial=None):
        """SA's Fisher diagonal of `grad_samples` replay samples, and the original weights.

        See `Method.prepare`. Returns None: no mask.
        """
        def loss(m, batch):
            return self.loss.timestep_sum(m, batch, self.cfg.fisher_timesteps,
                                          self.cfg.fisher_chunk, self.cfg.fisher_label_dropout)

        self.fisher = fisher_diagonal(model, loss, self.fisher_samples(retain(1)),
                                      self.cfg.grad_samples, desc="fisher replay",
                                      progress=progress, partial=partial)
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()
                       if p.requires_grad}
        return None

    def state(self):
        """The Fisher diagonal, under "fisher." names."""
        return {f"fisher.{n}": f for n, f in self.fisher.items()}

    def load_state(self, tensors, original):
        """Restore the Fisher diagonal; the EWC anchor is `original`'s weights."""
        self.fisher = {n[len("fisher."):]: f for n, f in tensors.items()}
        self.anchor = {n: p.detach().clone() for n, p in original.named_parameters()
                       if p.requires_grad}

    def ewc_penalty(self, model) -> torch.Tensor:
        """sum_i F_i (theta_i - theta*_i)^2 over every trainable weight."""
        terms = [(self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
                 for n, p in model.named_parameters() if p.requires_grad]
        return torch.stack(terms).sum()

    def forget_loss(self, model, batch):
        """The training loss on a batch of surrogate noise labelled c_f."""
        return self.loss(model, batch, reduction=self.forget_reduction,
                         variance=self.forget_variance)

    def retain_loss(self, model, batch):
        """replay_weight * the training loss on a replay batch + ewc_lambda * the EWC penalty."""
        return (self.cfg.replay_weight * self.loss(model, batch, reduction=self.retain_reduction,
                                                   variance=self.retain_variance)
                + self.cfg.ewc_lambda * self.ewc_penalty(model))
