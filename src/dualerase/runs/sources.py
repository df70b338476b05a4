"""What a method is fed: the base model's real forget and retain data, uniform-noise surrogates and replay samples."""
from __future__ import annotations

from pathlib import Path

import torch

from dualerase.config import Config
from dualerase.data.folders import encode
from dualerase.data.streams import stream_seed
from dualerase.launch import processes
from dualerase.runs.workload import RealData, Workload
from dualerase.sampling import generate


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

    def replay(self, labels: torch.Tensor, stream: str = "replay") -> torch.Tensor:
        """Samples the original model generates for `labels` with the evaluation sampler, in its input space, from the
        named random stream; every process gets all of them (every process trains on the replay)."""
        cache = self.replay_dir if stream == "replay" or self.replay_dir is None else self.replay_dir / stream
        return generate(self.w.model, self.w.vae, self.cfg.sample, labels, precision=self.cfg.compute.mixed_precision,
                        seed=stream_seed(self.cfg.seed, stream), cache_dir=cache, desc=stream.replace("_", " "),
                        progress=self.progress, decode=False, everywhere=True)
