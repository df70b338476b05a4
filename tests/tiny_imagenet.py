"""Offline stand-ins for the ImageNet workload: a tiny 1000-class latent DiT pipeline with a tiny
VAE, a small ImageNet-style folder, a tiny timm classifier and random Inception weights: the same
code paths, in seconds."""
import json
from pathlib import Path
from unittest import mock

import numpy as np
import timm
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo

# golden retriever, tench, goldfish, Chihuahua
SYNSETS = ["n02099601", "n01440764", "n01443537", "n02085620"]


def build_pipeline(folder: Path, transformer: DiTTransformer2DModel | None = None, *,
                   out_channels: int = 8, labels: list[str] | None = None) -> Path:
    """A DiTPipeline folder as the hub holds it: transformer, vae, scheduler and id2label in
    model_index.json.

    The default transformer is trained-in-diffusers style (each block's embedder initialised on its
    own); pass one converted from an original-style DiT for equal copies, as in
    facebook/DiT-XL-2-256. `out_channels` 4: a DiT without learned sigma; `labels`: the class names
    of a model of other than 1000 classes."""
    torch.manual_seed(0)
    transformer = transformer or DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=out_channels,
        num_layers=2, sample_size=8, patch_size=2,
        num_embeds_ada_norm=len(labels) if labels else 1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 32],
                        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=16)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDPMScheduler()).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    info = ImageNetInfo()
    index["id2label"] = {str(i): name for i, name in
                         enumerate(labels or [info.index_to_description(i) for i in range(1000)])}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def build_data(folder: Path, per_class: int = 6) -> Path:
    """Synthetic JPEGs, one colour per class with noise, non-square so that the center crop
    matters."""
    rng = np.random.default_rng(0)
    for k, synset in enumerate(SYNSETS):
        (folder / synset).mkdir(parents=True)
        for i in range(per_class):
            base = np.array([60 * k + 40, 255 - 50 * k, 120], dtype=np.float64)
            arr = np.clip(base + rng.normal(0, 30, (24, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / synset / f"{synset}_{i}.JPEG")
    return folder


def build_classifier(path: Path, num_classes: int = 1000, always: int | None = None) -> Path:
    """Random weights for timm's tiny `test_resnet`, as a local weights file; `always`: it predicts
    that class."""
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=num_classes)
    if always is not None:
        with torch.no_grad():
            net.get_classifier().bias[always] = 1e6
    save_file(net.state_dict(), str(path))
    return path


def build_inception(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's InceptionV3 with random weights (the real ones cannot be downloaded
    here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict",
                              lambda self, sd: None):
        torch.manual_seed(seed)
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    # variance-preserving init, so that random features still tell images apart
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def build_world(base: Path) -> dict:
    """Every stand-in under `base`: pipeline, data, classifier, Inception and the FID reference
    without class 207."""
    from dualerase.cli import fid_reference

    w = {"model": build_pipeline(base / "tiny-dit"), "data": build_data(base / "train"),
         "classifier": build_classifier(base / "classifier.safetensors"),
         "inception": build_inception(base / "inception.pth"), "reference": base / "reference"}
    assert fid_reference.main(["--data", str(w["data"]), "--output", str(w["reference"]),
                               "--exclude", "golden retriever", "--quiet"]) == 0
    return w


# The ImageNet presets' robustness measurements, shrunk to seconds.
ROBUSTNESS = {"robustness.samples": 4, "robustness.relearn_images": [2],
              "robustness.relearn_steps": 2, "robustness.relearn_at": [0, 2],
              "robustness.attack_steps": 2, "erase.probe_samples": 2, "erase.probe_steps": 2}


def erase_args(w: dict, out: Path, *extra: str) -> list[str]:
    """erase-class arguments that erase golden retriever from the stand-ins in seconds (tiny
    evaluation, 4 steps)."""
    sets = ["eval.fa_classifier=test_resnet", f"eval.fa_weights={w['classifier']}",
            "eval.fa_size=32", f"eval.fid_reference={w['reference']}",
            f"eval.fid_weights={w['inception']}", "eval.forget_samples=4", "eval.retain_samples=6",
            "eval.grid_per_class=2", "eval.grid_classes=3", "sample.steps=3", "sample.batch_size=4",
            "erase.outer_steps=4", "erase.batch_size=2", "erase.checkpoint_every=2",
            "method.grad_samples=4", "data.retain_images=10",
            *(f"{k}={v}" for k, v in ROBUSTNESS.items())]
    return ["golden retriever", "--model", str(w["model"]), "--data", str(w["data"]), "--output",
            str(out), "--quiet", *[x for s in sets for x in ("--set", s)], *extra]
