"""The random streams of a run: named streams, generators fixed by (seed, index), seeded batches."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from dualerase.models.dit import drop_labels

# Every random stream of a run, by name and number. A stream's seed is drawn from (run seed,
# number), so no two (seed, stream) pairs share their draws: seed 1's forget batches are not seed
# 0's retain batches, which keeps the runs of a seed spread independent, and adding a stream never
# shifts another. The evaluation's sampling noise is keyed by the run's seed itself
# (`dualerase.runs.evaluation`), so the base model's cached scores are per seed.
STREAMS = {
    # single-sample (or saliency-batch) forget data of the method's preparation
    "forget_samples": 1,
    "retain_samples": 2,  # the same for retain data
    "forget_batches": 3,  # erasure batches
    "retain_batches": 4,
    "surrogate": 5,  # SA's uniform-noise images
    "replay": 6,  # SA's samples of the original model
    "erasure": 7,  # torch's global generator during erasure
    "retain_labels": 8,  # labels of the evaluation's retain samples when drawn at random
    "probe": 9,  # noise of the forget-accuracy probe (erase.stop_at_forget_accuracy)
    "relearn": 10,  # the relearning attack's choice of images, timesteps and noise
    "attack": 11,  # the conditioning attack's
    # SA's samples of the forget class for its Fisher (method.fisher_classes=all)
    "fisher_replay": 12,
}


def stream_seed(seed: int, name: str) -> int:
    """The seed of the named random stream of a run with this seed."""
    return int(np.random.SeedSequence([seed, STREAMS[name]]).generate_state(1)[0])


def seeded_generator(seed: int, index: int) -> torch.Generator:
    """A generator fixed by (seed, index) alone, so batch `index` is the same in a resumed run.

    The sampler keys it by a batch's first sample, so sample.batch_size is part of the sampling
    protocol."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
            label_dropout: float = 0.0, null_class: int = -1, start: int = 0):
    """Endless random batches (x, y, per-sample noise seeds) drawn with replacement.

    Each label is dropped to `null_class` with probability `label_dropout`. Batch i depends only on
    (seed, i), so a resumed run continues (from batch `start`) with exactly the batches it would
    have seen."""
    for i in itertools.count(start):
        gen = seeded_generator(seed, i)
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        seeds = torch.randint(0, 2**62, (batch_size,), generator=gen)
        yield x[idx], drop_labels(y[idx], label_dropout, null_class, gen), seeds


def shard(stream, rank: int, world: int):
    """This process's contiguous share of every batch of `stream` (data parallelism).

    The global batch is the configured one; `rank` of `world` processes takes its 1/world."""
    for batch in stream:
        n = len(batch[0]) // world
        yield tuple(t[rank * n:(rank + 1) * n] for t in batch)
