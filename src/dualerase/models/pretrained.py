"""Pretrained DiTs in diffusers layout (a hub id or local folder) in, DiTPipeline folders out."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError

from dualerase.errors import ModelError
from dualerase.models.dit import (
    TIE_TOLERANCE,
    DiTTransformer2DModel,
    describe_model,
    disable_builtin_label_dropout,
    embedder_difference,
    separate_copies,
    set_norm_eps,
    set_timestep_shift,
    tie_embedders,
    untie_embedders,
)
from dualerase.storage import replace_folder

# the hub's DiT folders predate the dedicated class
DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
PATTERNS = ["model_index.json", "transformer/*", "vae/*", "scheduler/*"]
# next to the transformer's config.json: the settings a model we wrote was trained with
RECORD = "dualerase.json"
ORIGINAL_EPS = 1e-6  # the original DiT's LayerNorm eps, everywhere


@dataclass
class Pretrained:
    """A class-conditional DiT with its VAE (latent models), scheduler config and class names."""

    transformer: DiTTransformer2DModel
    vae: AutoencoderKL | None
    scheduler_config: dict | None  # the folder's own scheduler (what DiTPipeline samples with)
    id2label: dict[int, str] | None
    root: Path

    @property
    def image_size(self) -> int:
        """Pixel resolution of the images the model makes (latent size times the VAE's scale)."""
        size = self.transformer.config.sample_size
        return (size * 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None
                else size)


def locate(path: str) -> Path:
    """A local folder as is, or a hub id resolved through the Hugging Face cache (fetched once).

    Raises ModelError for a file, or an id whose files are neither cached nor downloadable."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"the model {path} (--model, or model.path) is a file: give a folder "
                             "in diffusers layout (transformer/, vae/, scheduler/) or a hub id "
                             "such as facebook/DiT-XL-2-256")
        return local
    try:
        return Path(snapshot_download(path, allow_patterns=PATTERNS))
    except HFValidationError:
        raise ModelError(f"the model {path} (--model, or model.path): no such folder: give an "
                         "existing folder in diffusers layout or a hub id such as "
                         "facebook/DiT-XL-2-256") from None
    except Exception as e:  # offline, unknown repo, gated repo: all mean "the files are not here"
        raise ModelError(
            f"the model {path} (--model, or the imagenet preset's model.path) is not a local "
            f"folder, and its files are not in the Hugging Face cache "
            f"({type(e).__name__}): on a machine with network run `hf download {path}` once "
            "(the cache is $HF_HOME, default ~/.cache/huggingface; copy it over), or pass --model "
            "a local folder with transformer/, vae/ and scheduler/") from None


def _config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} cannot be read ({e}): re-download or re-save the model") from None


def dit_config(root: Path) -> tuple[str | None, dict]:
    """(subfolder, config) of the transformer in `root`.

    Raises ModelError where `root` holds no class-conditional DiT (no config, another class, no
    classes, or output channels that are neither noise nor noise and sigma)."""
    sub = "transformer" if (root / "transformer" / "config.json").exists() else None
    config_path = root / (sub or "") / "config.json"
    if not config_path.exists():
        raise ModelError(f"{root} holds no transformer/config.json: give a DiT folder in diffusers "
                         "layout (transformer/, vae/, scheduler/) or a folder written by "
                         "save_pretrained")
    config = _config(config_path)
    if config.get("_class_name") not in DIT_CLASSES or not config.get("num_embeds_ada_norm"):
        raise ModelError(f"{root} is not a class-conditional DiT (transformer class "
                         f"{config.get('_class_name')!r}, num_embeds_ada_norm "
                         f"{config.get('num_embeds_ada_norm')!r}): give a DiT such as "
                         "facebook/DiT-XL-2-256")
    channels = config.get("in_channels") or 4  # diffusers' default
    out = config.get("out_channels") or channels
    if out not in (channels, 2 * channels):
        raise ModelError(f"{root}: the DiT has {out} output channels for {channels} input "
                         f"channels: a DiT predicts {channels} (noise, fixed variance) or "
                         f"{2 * channels} (noise and learned sigma); give such a model")
    return sub, config


def id2label(root: Path) -> dict[int, str] | None:
    """The class names in a pipeline folder's model_index.json (DiTPipeline's id2label), if any."""
    index = root / "model_index.json"
    labels = _config(index).get("id2label") if index.exists() else None
    return {int(k): v for k, v in labels.items()} if labels else None


def transformer_folder(folder: Path) -> Path:
    """Where the transformer's config.json is: a pipeline folder's `transformer/`, else `folder`."""
    folder = Path(folder)
    return folder / "transformer" if (folder / "transformer" / "config.json").exists() else folder


def read_record(folder: Path | None) -> dict:
    """The settings recorded in a model folder we wrote (`dualerase.json`), or {}."""
    path = transformer_folder(folder) / RECORD if folder is not None else None
    return _config(path) if path is not None and path.exists() else {}


def write_record(folder: Path, model: DiTTransformer2DModel) -> None:
    """Record beside the transformer's config what `match_training` needs to run it as trained."""
    (transformer_folder(folder) / RECORD).write_text(json.dumps(describe_model(model), indent=2)
                                                     + "\n")


def match_training(model, folder: Path | str | None = None, *, tie: bool | str = "auto",
                   timestep_shift: int | None = None, norm_eps: float | None = None):
    """Run a diffusers DiT (or a DiTPipeline's transformer) as it was trained; returns `model`.

    That is its embedders, timestep frequencies and LayerNorm eps. A checkpoint converted from the
    original DiT has equal embedder copies in every block (within TIE_TOLERANCE, the rule): by
    default ("auto", None) they are tied into one shared module (block 0's values), with the
    original's frequencies (shift 0) and eps 1e-6. A model trained in diffusers layout (copies
    differ) keeps its copies, diffusers' shift 1 and its config's eps. Values recorded in `folder`
    by us (`dualerase.json`) take precedence over the guess; explicit arguments over both. Copies
    tied although not bit-equal are noted on the model with their difference, which
    `describe_model` reports.

    Raises:
        ModelError: `tie` is True but the copies differ."""
    dit = getattr(model, "transformer", model)
    record = read_record(Path(folder)) if folder is not None else {}
    difference = embedder_difference(dit)
    equal = difference <= TIE_TOLERANCE
    # one block has no copies to tell by: diffusers-trained
    original = equal and len(dit.transformer_blocks) > 1
    if tie is True and not equal:
        raise ModelError(f"model.tie_embedders=true, but the blocks' timestep/class embedders "
                         f"differ by up to {difference:.2g} (ties within {TIE_TOLERANCE:g}; a "
                         "model trained in diffusers layout): set model.tie_embedders to auto or "
                         "false")
    tied = original if tie == "auto" else tie
    dit.tied_within = (f"copies differed by up to {difference:.1e}, within the tolerance "
                       f"{TIE_TOLERANCE:g}: block 0's values") if tied and difference > 0 else None
    if tied:
        tie_embedders(dit)
    else:
        untie_embedders(dit)
    set_timestep_shift(dit, timestep_shift if timestep_shift is not None else
                       record.get("timestep_shift", 0 if original else 1))
    set_norm_eps(dit, norm_eps if norm_eps is not None else
                 record.get("norm_eps", ORIGINAL_EPS if original else dit.config.norm_eps))
    return model


def load_pretrained(path: str, variant: str | None = None, **settings) -> Pretrained:
    """Load a class-conditional DiT and what comes with it, run as it was trained.

    Args:
        path: a diffusers pipeline folder, a bare transformer folder, or a hub id.
        variant: the weights variant to load (`save_pretrained(variant=...)`); None: plain files.
        **settings: `match_training`'s keyword arguments.

    Raises:
        ModelError: no such model or DiT, weights that cannot load, a latent DiT without VAE."""
    root = locate(path)
    sub, _ = dit_config(root)
    has_vae = (root / "vae" / "config.json").exists()
    try:
        transformer = DiTTransformer2DModel.from_pretrained(
            root, subfolder=sub, variant=_variant(root / (sub or ""), variant))
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae",
                                            variant=_variant(root / "vae", variant)) \
            if has_vae else None
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load the weights in {root} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}): re-download or re-save the model"
                         ) from None
    if vae is None and transformer.config.in_channels not in (1, 3):
        raise ModelError(f"{root} has a {transformer.config.in_channels}-channel (latent) DiT but "
                         "no vae/ folder: give the whole pipeline folder")
    scheduler = root / "scheduler" / "scheduler_config.json"
    match_training(transformer, root, **settings)
    return Pretrained(transformer=disable_builtin_label_dropout(transformer), vae=vae,
                      scheduler_config=_config(scheduler) if scheduler.exists() else None,
                      id2label=id2label(root), root=root)


def _variant(folder: Path, variant: str | None) -> str | None:
    """The weights variant to load from `folder`: `variant` where it was saved
    (`save_pretrained(variant=...)`), else the plain files; a folder that holds only variants needs
    one named (one line, before diffusers tries)."""
    found = sorted(f.name for f in folder.glob("diffusion_pytorch_model*")
                   if not f.name.endswith(".json"))
    variants = sorted({name.split(".")[1].split("-")[0] for name in found if name.count(".") == 2})
    if variant in variants:
        return variant
    if variants and not any(name.count(".") == 1 for name in found):
        raise ModelError(f"{folder} holds its weights only as the variant(s) {', '.join(variants)} "
                         f"({', '.join(found)}): pass --set model.variant={variants[0]}")
    return None


def save_pipeline(folder: Path, transformer, vae, scheduler_config: dict | None,
                  id2label: dict[int, str]) -> None:
    """Write a whole DiTPipeline folder (transformer, vae, scheduler, class names), swapped in.

    `save_pretrained` drops `id2label`, so it is added to model_index.json, where
    `DiTPipeline.from_pretrained` reads it for `get_label_ids`. The scheduler is the source folder's
    own (DiTPipeline samples with fixed variance). Tied embedders are written as equal copies
    (diffusers' layout), and `dualerase.json` records the settings."""
    scheduler = DDPMScheduler.from_config(scheduler_config) if scheduler_config else DDPMScheduler()
    # DiTPipeline passes no variance
    if scheduler.config.get("variance_type") in ("learned", "learned_range"):
        scheduler = DDPMScheduler.from_config({**scheduler.config, "variance_type": "fixed_small"})
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with separate_copies(transformer):
        DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(tmp)
    write_record(tmp, transformer)
    index = json.loads((tmp / "model_index.json").read_text())
    index["id2label"] = {str(k): v for k, v in sorted(id2label.items())}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    replace_folder(tmp, folder)


def load_model(folder: Path, **settings) -> DiTTransformer2DModel:
    """The transformer of a saved model, run as it was trained.

    `folder` is a pipeline folder (transformer/) or a bare transformer folder; `match_training`
    reads what we recorded there, and `settings` are its keyword arguments."""
    model = DiTTransformer2DModel.from_pretrained(transformer_folder(folder))
    return disable_builtin_label_dropout(match_training(model, folder, **settings))

