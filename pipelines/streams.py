"""The data streams of an erasure: the named random streams, endless seeded batches, and the data each method is fed."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from pipelines.config import Config
from pipelines.data import encode
from pipelines.dit import drop_labels
from pipelines.sampling import generate, seeded_generator
from pipelines.workload import RealData, Workload, processes

# Every random stream of a run, by name and number. A stream's seed is drawn from (run seed, number), so no two
# (seed, stream) pairs share their draws: seed 1's forget batches are not seed 0's retain batches, which keeps the
# runs of a seed spread independent, and adding a stream never shifts another. The evaluation's sampling noise is
# keyed by the run's seed itself (`pipelines.evaluation`), so the base model's cached scores are per seed.
STREAMS = {
    "forget_samples": 1,  # single-sample (or saliency-batch) forget data of the method's preparation
    "retain_samples": 2,  # the same for retain data
    "forget_batches": 3,  # erasure batches
    "retain_batches": 4,
    "surrogate": 5,  # SA's uniform-noise images
    "replay": 6,  # SA's samples of the original model
    "erasure": 7,  # torch's global generator during erasure
    "retain_labels": 8,  # labels of the evaluation's retain samples when drawn at random
    "probe": 9,  # noise of the forget-accuracy probe (erase.stop_at_forget_accuracy)
}


def stream_seed(seed: int, name: str) -> int:
    """The seed of the named random stream of a run with this seed."""
    return int(np.random.SeedSequence([seed, STREAMS[name]]).generate_state(1)[0])


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, label_dropout: float = 0.0,
            null_class: int = -1, start: int = 0):
    """Endless random batches (x, y, per-sample noise seeds) drawn with replacement, labels dropped to `null_class`.

    Batch i depends only on (seed, i), so a resumed run continues with exactly the batches it would have seen."""
    for i in itertools.count(start):
        gen = seeded_generator(seed, i)
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        seeds = torch.randint(0, 2**62, (batch_size,), generator=gen)
        yield x[idx], drop_labels(y[idx], label_dropout, null_class, gen), seeds


def shard(stream, rank: int, world: int):
    """This process's contiguous share of every batch (data parallelism; the global batch is the configured one)."""
    for batch in stream:
        n = len(batch[0]) // world
        yield tuple(t[rank * n:(rank + 1) * n] for t in batch)


def real_data(w: Workload, cfg: Config, forget_class: int, progress: bool = True) -> RealData:
    """The base model's real forget and retain data, in its input space (latents for a latent model)."""
    with processes().main_process_first():  # the main process encodes and caches; the others read
        return w.real_data(forget_class, cfg, progress and processes().is_main_process)


class Source:
    """What a method's data is built from (`Method.data`): the real images, uniform-noise surrogates in the model's
    input space, and replay samples of the original model."""

    def __init__(self, w: Workload, cfg: Config, real: RealData, progress: bool, replay_dir: Path | None):
        self.w, self.cfg, self.real, self.progress, self.replay_dir = w, cfg, real, progress, replay_dir

    def surrogate(self, like: torch.Tensor) -> torch.Tensor:
        """As many uniform-noise images in [-1, 1] as `like` holds (VAE-encoded, with flips, for a latent model)."""
        gen = torch.Generator().manual_seed(stream_seed(self.cfg.seed, "surrogate"))
        if self.w.vae is None:
            return torch.rand(like.shape, generator=gen) * 2 - 1
        size = self.w.pretrained.image_size
        noise = torch.rand((len(like) // 2, 3, size, size), generator=gen) * 2 - 1
        return encode(noise, self.w.vae, seed=stream_seed(self.cfg.seed, "surrogate"), progress=False)

    def replay(self, labels: torch.Tensor) -> torch.Tensor:
        """Samples the original model generates for `labels` with the evaluation sampler, in its input space; every
        process gets all of them (every process trains on the replay)."""
        return generate(self.w.model, self.w, self.cfg.sample, labels, precision=self.cfg.compute.mixed_precision,
                        seed=stream_seed(self.cfg.seed, "replay"), cache_dir=self.replay_dir, desc="replay",
                        progress=self.progress, decode=False, everywhere=True)
