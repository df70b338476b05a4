"""Erasure that stops when the class is gone (erase.stop_at_forget_accuracy, opt-in): a cheap forget-accuracy probe
every few outer steps."""
from __future__ import annotations

from dualerase.config import Config
from dualerase.data.streams import stream_seed
from dualerase.metrics.scorer import counts_as_forget
from dualerase.models.dit import sampler_scheduler
from dualerase.runs.workload import Workload
from dualerase.sampling import class_labels, from_uint8, sample, to_uint8


class ForgetProbe:
    """Every `erase.probe_every` outer steps: `probe_samples` images of the forget class from the evaluation's sampler
    at `probe_steps` steps, with noise of their own (the evaluation's samples do not change), scored by the
    evaluation's classifier. `stop(fa)` is true once two probes in a row are at or below the target.

    `history` (the log records of a resumed run) restores the count of probes in a row at the target."""

    def __init__(self, w: Workload, cfg: Config, forget_class: int, history: list[dict] = ()):
        self.w, self.cfg, self.forget_class = w, cfg, forget_class
        self.target = cfg.erase.stop_at_forget_accuracy
        self.in_a_row = 0
        for record in history:
            if "probe_forget_accuracy" in record:
                self.stop(record["probe_forget_accuracy"])

    def due(self, finished_steps: int) -> bool:
        return self.target is not None and finished_steps % self.cfg.erase.probe_every == 0

    def __call__(self, model) -> float:
        """Forget accuracy of the probe's samples (one process: every process holds the same weights)."""
        e, s = self.cfg.erase, self.cfg.sample
        labels = class_labels(self.w.num_classes, e.probe_samples, only=self.forget_class)
        images = sample(model, sampler_scheduler(s.scheduler, s.timestep_spacing), labels, num_steps=e.probe_steps,
                        guidance=s.guidance, seed=stream_seed(self.cfg.seed, "probe"), batch_size=s.batch_size,
                        vae=self.w.vae, progress=False, guidance_channels=s.guidance_channels)
        images = from_uint8(to_uint8(images))
        probs = self.w.scorer.probabilities(images)
        return counts_as_forget(probs, images, self.forget_class, self.cfg.eval, self.w.scorer).float().mean().item()

    def stop(self, forget_accuracy: float) -> bool:
        self.in_a_row = self.in_a_row + 1 if forget_accuracy <= self.target else 0
        return self.in_a_row >= 2
