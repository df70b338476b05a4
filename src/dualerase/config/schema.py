"""The one config schema: every option of a run with its one default, in sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le

from dualerase.metrics.classifier import ClassifierRecipe
from dualerase.models.digits import DigitsRecipe
from dualerase.unlearn.dualoptim import EraseConfig
from dualerase.unlearn.methods import MethodConfig


@dataclass
class ModelConfig:
    """The model to erase: the embedded digits DiT or a diffusers one, and how it is run."""

    # "digits": the embedded tiny DiT (section `digits`); "diffusers": `path` (--model)
    source: Literal["digits", "diffusers"] = "digits"
    # a hub id (read through the Hugging Face cache) or a local pipeline folder
    path: str = "facebook/DiT-XL-2-256"
    # weights saved as a variant (fp16: diffusion_pytorch_model.fp16.safetensors)
    variant: str | None = None
    # Run the model as it was trained (dualerase.models.pretrained.match_training): a checkpoint
    # converted from the original DiT has equal embedder copies in every block, one trained in
    # diffusers layout distinct ones.
    # tie_embedders: one embedder shared by all blocks (the original's); null / auto: the original's
    # settings iff the copies are equal at load (within 1e-4), unless the model folder records
    # values written by us (dualerase.json)
    tie_embedders: bool | str = "auto"
    # frequencies exp(-ln(1e4) i / (128 - shift)): 0 original, 1 diffusers
    timestep_shift: int | None = None
    # eps of diffusers' config-driven LayerNorm: 1e-6 original, else the config's
    norm_eps: Annotated[float | None, Gt(0)] = None


@dataclass
class DataConfig:
    """The real images of a diffusers model (--data): an ImageNet-style train folder.

    The folder holds one sub-folder per class.
    """

    path: str | None = None
    # images of the forget class used (its first N; 0: all)
    forget_images: Annotated[int, Ge(0)] = 0
    # retain subset drawn at random from the other classes (0: all)
    retain_images: Annotated[int, Ge(0)] = 5000
    # encode both sets through the VAE once; later runs read the cached latents
    latent_cache: bool = True


@dataclass
class ComputeConfig:
    """How the work runs.

    Processes come from the launcher (accelerate launch / torchrun), one per device.
    """

    # bf16: autocast; weights and optimizer states stay float32
    mixed_precision: Literal["no", "bf16"] = "no"
    # torch's intra-op CPU threads per process (null: torch's default, one per core; the commands
    # set a short OpenMP spin, GOMP_SPINCOUNT=2000, that keeps it fast beside other work; the
    # digits models train at digits.train_threads: see docs/performance.md, "Threads"); another
    # count may change results by float rounding
    threads: Annotated[int | None, Gt(0)] = None
    # recompute activations in backward: less memory, ~30% slower steps
    gradient_checkpointing: bool = False
    # float32 matmuls and convolutions in TF32 on CUDA (Ampere and later), as the published DiT code
    # sets; false: full float32. No effect on CPU or on bf16 autocast's bf16 matmuls
    tf32: bool = True
    # torch.compile the DiT in place (names and checkpoints unchanged) for sampling and erasure:
    # compiles once per batch shape (about a minute on CPU), then runs faster; numbers differ from
    # eager only by float rounding
    compile: bool = False


@dataclass
class SampleConfig:
    """The sampler of every evaluation and grid."""

    # ddpm: diffusers DDPMScheduler with the learned variance (DiT's sampler); ddim (eta 0) or
    # dpm-solver++ (2nd-order multistep): fewer steps, fixed variance; they read the forget accuracy
    # of partly erased models lower than DDPM
    scheduler: Literal["ddpm", "ddim", "dpm-solver++"] = "ddpm"
    steps: Annotated[int, Gt(0)] = 250  # DiT's default
    guidance: Annotated[float, Ge(0)] = 1.5  # classifier-free guidance scale (1: no guidance)
    # guide only the first k epsilon channels (DiT's sampler: 3); null: all
    guidance_channels: Annotated[int | None, Gt(0)] = None
    # dit: DiT's space_timesteps (from t = 999); diffusers' linspace (the same but for one step at
    # some odd counts), leading or trailing
    timestep_spacing: Literal["dit", "linspace", "leading", "trailing"] = "dit"
    batch_size: Annotated[int, Gt(0)] = 500


@dataclass
class EvalConfig:
    """How a model is measured: samples, the forget-accuracy rule, grid.png, classifier and FID."""

    # full: the sampler and sample counts as configured (published comparisons need it); fast: for
    # quick looks while tuning, at most 50 sampler steps and a quarter of the samples
    # (dualerase.runs.evaluation.evaluation_config)
    protocol: Literal["full", "fast"] = "full"
    forget_samples: Annotated[int, Gt(0)] = 200  # samples of the forget class, for forget accuracy
    # samples of each other class, for retain accuracy and FID
    retain_samples_per_class: Annotated[int, Gt(0)] = 100
    # instead: this many samples, labels drawn at random from the other classes
    retain_samples: Annotated[int | None, Ge(2)] = None  # at least 2: FID needs a covariance
    # FA counts a sample if the classifier's top class is the forget class at least this sure and it
    # lies within this L2 distance of a real image of that class; null: top class alone, as
    # published (metrics.scorer.counts_as_forget)
    fa_min_confidence: Annotated[float | None, Ge(0), Le(1)] = None
    fa_real_distance: Annotated[float | None, Gt(0)] = None
    grid_per_class: Annotated[int, Gt(0)] = 8  # images per class row of grid.png
    # classes shown in grid.png (the forget class first, then the lowest others)
    grid_classes: Annotated[int, Gt(0)] = 10
    # write the after-erasure samples as PNG folders and ADM-style .npz (samples/)
    save_samples: bool = True
    # KID of the digits protocol: on its classifier's features centred on the reference's mean and
    # divided by its RMS spread (metrics.fid.centred_kid), or raw: as they are (torch-fidelity's
    # default, dominated by the mean features' distance). Diffusers models: always torch-fidelity's
    # on its extractor's features, the published KID
    kid_features: Literal["centred", "raw"] = "centred"
    # Diffusers models (the digits default uses its own classifier and feature extractor):
    fa_classifier: str = "resnet34.tv_in1k"  # timm ImageNet classifier of forget accuracy
    fa_weights: str | None = None  # its weights file (null: the Hugging Face cache)
    fa_size: Annotated[int, Gt(0)] = 224  # samples are resized to this before classification
    # the classifier's class count (null: read from fa_weights, else ImageNet's 1000)
    fa_num_classes: Annotated[int | None, Gt(0)] = None
    # folder of real retained-class images, built by `fid-reference`
    fid_reference: str | None = None
    fid_extractor: str = "inception-v3-compat"  # torch-fidelity feature extractor
    fid_weights: str | None = None  # its weights file (null: torch-fidelity downloads them once)


@dataclass
class RobustnessConfig:
    """Is the class really gone? Measurements beyond the protocol's forget accuracy.

    They are made before and after erasure on the evaluation's sampler and noise (each off by
    default; runs/robustness.py).
    """

    # forget-class (and null-class) samples per measurement below
    samples: Annotated[int, Gt(0)] = 100
    # forget accuracy at each of these guidance scales (1.0: none; DiTPipeline's default is 4.0)
    guidances: list[float] = field(default_factory=list)
    # the share of null-class (unconditional) samples that the classifier calls the class
    unconditional: bool = False
    # retain accuracy and FID of the k classes the evaluation's classifier confuses most with the
    # forget class
    neighbours: Annotated[int, Ge(0)] = 0
    # the relearning attack: fine-tune a copy of the model on k real images of the forget class, for
    # each k here, with DiT's loss and AdamW; forget accuracy by the probe (erase.probe_samples at
    # erase.probe_steps) at relearn_at
    relearn_images: list[int] = field(default_factory=list)
    relearn_steps: Annotated[int, Gt(0)] = 100
    relearn_at: list[int] = field(default_factory=lambda: [0, 10, 25, 50, 100])
    relearn_lr: Annotated[float, Gt(0)] = 1e-4
    relearn_batch: Annotated[int, Gt(0)] = 8  # images per step, drawn from the k
    # the conditioning attack: with the model frozen, a new embedding of the forget class (a row per
    # class embedder, from the class's own row or the null class's) optimised with Adam so that the
    # model denoises real images of the class, then forget accuracy by the probe with it;
    # 0 steps: off
    attack_steps: Annotated[int, Ge(0)] = 0
    attack_start: Literal["class", "null"] = "class"
    attack_lr: Annotated[float, Gt(0)] = 1e-2
    attack_images: Annotated[int, Gt(0)] = 64  # real forget-class images it is fitted to


@dataclass
class Config:
    """A run's whole config: its seed and one section per part of the work."""

    # erasure batches, Fisher samples and evaluation noise all follow it
    seed: Annotated[int, Ge(0)] = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    digits: DigitsRecipe = field(default_factory=DigitsRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    method: MethodConfig = field(default_factory=MethodConfig)
    erase: EraseConfig = field(default_factory=EraseConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
