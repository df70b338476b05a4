"""Erasure that stops when the class is gone (erase.stop_at_forget_accuracy, opt-in): a cheap
forget-accuracy probe every few outer steps."""
from __future__ import annotations

from dualerase.config import Config
from dualerase.data.streams import stream_seed
from dualerase.metrics.scorer import counts_as_forget
from dualerase.models.dit import sampler_scheduler
from dualerase.runs.workload import Workload
from dualerase.sampling import class_labels, from_uint8, sample, to_uint8


class ForgetProbe:
    """The forget accuracy of a few samples, every `erase.probe_every` outer steps.

    `probe_samples` images of the forget class from the evaluation's sampler at `probe_steps`
    steps, with noise of their own (the evaluation's samples do not change), scored by the
    evaluation's classifier. `stop(fa)` is true once two probes in a row are at or below the
    target."""

    def __init__(self, w: Workload, cfg: Config, forget_class: int, history: list[dict] = ()):
        """A probe of `forget_class`; `history` (a resumed run's log) restores its count."""
        self.w, self.cfg, self.forget_class = w, cfg, forget_class
        self.target = cfg.erase.stop_at_forget_accuracy
        self.in_a_row = 0
        for record in history:
            if "probe_forget_accuracy" in record:
                self.stop(record["probe_forget_accuracy"])

    def due(self, finished_steps: int) -> bool:
        """Whether a probe follows this many finished outer steps (never without a target)."""
        return self.target is not None and finished_steps % self.cfg.erase.probe_every == 0

    def __call__(self, model) -> float:
        """Forget accuracy of the probe's samples, on one process (all hold the same weights)."""
        erase_cfg, sample_cfg = self.cfg.erase, self.cfg.sample
        labels = class_labels(self.w.num_classes, erase_cfg.probe_samples, only=self.forget_class)
        images = sample(model, sampler_scheduler(sample_cfg.scheduler, sample_cfg.timestep_spacing),
                        labels, num_steps=erase_cfg.probe_steps, guidance=sample_cfg.guidance,
                        seed=stream_seed(self.cfg.seed, "probe"), batch_size=sample_cfg.batch_size,
                        vae=self.w.vae, progress=False,
                        guidance_channels=sample_cfg.guidance_channels)
        images = from_uint8(to_uint8(images))
        probs = self.w.scorer.probabilities(images)
        counted = counts_as_forget(probs, images, self.forget_class, self.cfg.eval, self.w.scorer)
        return counted.float().mean().item()

    def stop(self, forget_accuracy: float) -> bool:
        """Count this probe; true once two probes in a row are at or below the target."""
        self.in_a_row = self.in_a_row + 1 if forget_accuracy <= self.target else 0
        return self.in_a_row >= 2
