"""DiT as diffusers' DiTTransformer2DModel, run with the original DiT's settings.

Building and loading it, label dropout, the original DiT's embedders, timestep frequencies and
LayerNorm eps, and DiT's schedulers."""
from __future__ import annotations

import contextlib
import copy
import types

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
)
from diffusers.models.embeddings import LabelEmbedding


def num_classes(model: DiTTransformer2DModel) -> int:
    """The number K of real classes; the label embedding's row K is guidance's null class."""
    return model.config.num_embeds_ada_norm


def disable_builtin_label_dropout(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Turn off diffusers' in-model label dropout (p = 0.1 in train mode, drawn in EVERY block).

    The original DiT drops a sample's label once for the whole network; `drop_labels` does that
    instead, with an explicit probability per kind of batch, so that gradient ascent never silently
    hits the null class that guidance uses for every class."""
    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return model


def build_dit(*, num_classes: int, sample_size: int, in_channels: int, patch_size: int,
              layers: int, heads: int, head_dim: int,
              learn_sigma: bool = True) -> DiTTransformer2DModel:
    """A class-conditional DiT with the null-class row for classifier-free guidance.

    `learn_sigma` doubles the output channels (a learned variance, as DiT); the other arguments are
    diffusers' config values under shorter names."""
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=in_channels * (2 if learn_sigma else 1), num_layers=layers,
        sample_size=sample_size, patch_size=patch_size, num_embeds_ada_norm=num_classes)
    return disable_builtin_label_dropout(model)


def load_dit(path: str) -> DiTTransformer2DModel:
    """Load a transformer saved with `save_pretrained`."""
    return disable_builtin_label_dropout(DiTTransformer2DModel.from_pretrained(path))


def embedders(model: DiTTransformer2DModel) -> list[torch.nn.Module]:
    """Each block's timestep + class embedder (`norm1.emb`); the final layer uses block 0's."""
    return [block.norm1.emb for block in model.transformer_blocks]


def embedders_tied(model: DiTTransformer2DModel) -> bool:
    """Whether all blocks share block 0's embedder (as the original DiT); false with one block."""
    first, *rest = embedders(model)
    return bool(rest) and all(e is first for e in rest)


# Embedder copies within this (largest absolute difference of any weight) are one embedder
# copied: a checkpoint converted from the original DiT, perhaps through a lower precision and back.
# Copies trained in diffusers layout start from independent initialisations and differ by orders
# of magnitude more.
TIE_TOLERANCE = 1e-4


def embedder_difference(model: DiTTransformer2DModel) -> float:
    """The largest absolute difference between block 0's embedder and any other block's.

    0 for tied or equal copies, or a single block."""
    first, *rest = [e.state_dict() for e in embedders(model)]
    return max((float((v.float() - other[k].float()).abs().max())
                for other in rest for k, v in first.items()), default=0.0)


def embedder_copies_equal(model: DiTTransformer2DModel, tolerance: float = TIE_TOLERANCE) -> bool:
    """Whether every block's embedder holds block 0's values within `tolerance`.

    True of a checkpoint converted from the original DiT (its one embedder copied into each block),
    false of a model trained in diffusers layout (blocks initialised independently)."""
    return embedder_difference(model) <= tolerance


def tie_embedders(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Make every block use block 0's embedder, as the original DiT.

    One parameter per weight, gradients summed over blocks. `named_parameters()` then lists each
    shared weight once, so Fisher diagonals, masks and optimizer states follow without change;
    `state_dict()` still lists it under every block's name. Returns the model, changed in place."""
    first = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = first
    # diffusers' writer refuses tensors that share memory: this model saves equal copies
    # (diffusers' layout) instead, also from a pipeline's save_pretrained. Bound to the instance, so
    # a deep copy saves itself.
    model.save_pretrained = types.MethodType(_save_with_copies, model)
    return model


def _save_with_copies(model: DiTTransformer2DModel, *args, **kwargs):
    with separate_copies(model):
        return type(model).save_pretrained(model, *args, **kwargs)


def untie_embedders(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Give every block its own copy of a shared embedder (equal values, trained apart from now)."""
    if embedders_tied(model):
        for block in model.transformer_blocks[1:]:
            block.norm1.emb = copy.deepcopy(block.norm1.emb)
    vars(model).pop("save_pretrained", None)
    return model


@contextlib.contextmanager
def separate_copies(model: DiTTransformer2DModel):
    """Within the block, a tied model holds equal but separate copies; the tie is restored after.

    For writers that refuse shared memory (safetensors, `save_pretrained`): the files are diffusers'
    layout with equal copies."""
    shared, saver = embedders(model), vars(model).get("save_pretrained")
    untie_embedders(model)
    try:
        yield model
    finally:
        for block, emb in zip(model.transformer_blocks, shared):
            block.norm1.emb = emb
        if saver is not None:
            model.save_pretrained = saver


def set_timestep_shift(model: DiTTransformer2DModel, shift: int) -> DiTTransformer2DModel:
    """Set the timestep frequencies exp(-ln(10000) i / (128 - shift)) of every embedder.

    The original DiT divides by 128 (shift 0); diffusers' `CombinedTimestepLabelEmbeddings` builds
    shift 1. A model samples well only with the frequencies it was trained with."""
    for emb in embedders(model):
        emb.time_proj.downscale_freq_shift = shift
    return model


def timestep_shift(model: DiTTransformer2DModel) -> int:
    """The timestep-frequency shift the model runs with (see `set_timestep_shift`)."""
    return int(model.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift)


def set_norm_eps(model: DiTTransformer2DModel, eps: float) -> DiTTransformer2DModel:
    """Set the eps of the one LayerNorm per block that diffusers builds from `config.norm_eps`.

    That is norm3, before the MLP; the attention-side and final LayerNorms are hard-coded to 1e-6,
    as in the original, where every LayerNorm uses 1e-6. Written into the config too, so that
    `save_pretrained` records it."""
    for block in model.transformer_blocks:
        block.norm3.eps = eps
    model.register_to_config(norm_eps=eps)
    return model


def norm_eps(model: DiTTransformer2DModel) -> float:
    """The eps of the blocks' norm3 (see `set_norm_eps`)."""
    return float(model.transformer_blocks[0].norm3.eps)


def count_parameters(model: torch.nn.Module) -> int:
    """The number of unique parameters, as the original DiT counts them.

    DiT-XL/2: 674.8M tied, 749.8M with 28 embedder copies; the fixed positional embedding is a
    buffer in diffusers, not counted."""
    return sum(p.numel() for p in model.parameters())  # parameters() lists a shared parameter once


EMBEDDERS = {True: "tied (one shared, as the original DiT)", False: "per block (as trained)"}


def describe_model(model: DiTTransformer2DModel) -> dict:
    """The embedders, timestep frequencies, LayerNorm eps and parameter count a model runs with.

    Where its copies were tied although not bit-equal, also by how much they differed
    (`match_training` notes it)."""
    tied = getattr(model, "tied_within", None)
    return {"embedders": EMBEDDERS[embedders_tied(model)], "timestep_shift": timestep_shift(model),
            "norm_eps": norm_eps(model), "model_parameters": count_parameters(model),
            **({"embedders_tied_within": tied} if tied and embedders_tied(model) else {})}


def drop_labels(labels: torch.Tensor, p: float, null_class: int,
                generator: torch.Generator | None = None):
    """Replace each label by `null_class` with probability `p`, drawn from `generator`."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, null_class, labels)


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The steps DiT's `space_timesteps(T, "n")` keeps, descending.

    The stride (T - 1) / (n - 1) added up in floating point and each sum rounded (half to even).
    Mostly diffusers' "linspace" steps, but at 278 of the counts 2-1000 one step differs (at 21
    steps the middle one is 499, against linspace's 500)."""
    stride, at, kept = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1, 0.0, []
    for _ in range(steps):
        kept.append(round(at))
        at += stride
    return kept[::-1]


class _DiTSpaced:
    """A diffusers scheduler that steps through `space_timesteps` (sample.timestep_spacing=dit)."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        """Step through DiT's `space_timesteps` of `num_inference_steps` (other options unused)."""
        super().set_timesteps(device=device, timesteps=space_timesteps(
            self.config.num_train_timesteps, num_inference_steps))


class DiTSpacedDDPMScheduler(_DiTSpaced, DDPMScheduler):
    """DDPMScheduler stepping through DiT's `space_timesteps`."""


class DiTSpacedDPMSolverMultistepScheduler(_DiTSpaced, DPMSolverMultistepScheduler):
    """DPMSolverMultistepScheduler stepping through DiT's `space_timesteps`."""


def make_scheduler(num_train_timesteps: int = 1000, timestep_spacing: str = "dit") -> DDPMScheduler:
    """DiT's diffusion: linear betas 1e-4..0.02, sampled with the model's learned variance.

    "dit" spacing steps through DiT's `space_timesteps(T, "n")` (from t = 999); diffusers'
    "linspace" keeps round(i (T - 1) / (n - 1)), the same but for one step at some odd counts; its
    default "leading" starts at 996 for 250 steps. The scheduler re-derives each step's beta from
    alphas_cumprod at the kept steps, as DiT's respacing does."""
    cls = DiTSpacedDDPMScheduler if timestep_spacing == "dit" else DDPMScheduler
    return cls(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4,
               beta_end=0.02, variance_type="learned_range", clip_sample=False,
               timestep_spacing="linspace" if timestep_spacing == "dit" else timestep_spacing)


SCHEDULER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM (eta 0)",
                   "dpm-solver++": "DPM-Solver++ (2nd order)"}


def sampler_scheduler(kind: str = "ddpm", timestep_spacing: str = "dit"):
    """The scheduler `sample.scheduler` names, on DiT's diffusion.

    "ddpm" (DiT's sampler, learned variance), "ddim" (eta 0, deterministic), or "dpm-solver++"
    (2nd-order multistep); the last two read epsilon only (fixed variance). DDIM steps by a fixed
    stride in diffusers whatever the spacing: "dit" gives it diffusers' "linspace" steps. Another
    kind raises ValueError."""
    ddpm = make_scheduler(timestep_spacing=timestep_spacing)
    if kind == "ddpm":
        return ddpm
    common = {k: ddpm.config[k] for k in ("num_train_timesteps", "beta_schedule", "beta_start",
                                          "beta_end", "timestep_spacing")}
    if kind == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if kind == "dpm-solver++":
        cls = (DiTSpacedDPMSolverMultistepScheduler if timestep_spacing == "dit"
               else DPMSolverMultistepScheduler)
        return cls(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sample.scheduler {kind!r}: use ddpm, ddim or dpm-solver++")


def learns_sigma(model: DiTTransformer2DModel) -> bool:
    """Whether the model predicts its variance too (DiT's learn_sigma: twice its input channels).

    Without, it samples with a fixed variance and trains on the epsilon MSE alone."""
    return (model.config.out_channels or model.config.in_channels) == 2 * model.config.in_channels


def fixed_variance(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The same schedule with the fixed posterior variance ("fixed_small"), for a model without."""
    return DDPMScheduler.from_config({**scheduler.config, "variance_type": "fixed_small"})
