"""The published DiT evaluation: forget accuracy with a timm classifier, FID with Inception.

FID is torch-fidelity's, against a folder of real images of the retained classes; the folder's
statistics are cached by name."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torch_fidelity
import torch_fidelity.registry
from timm.models import get_pretrained_cfg

from dualerase.metrics.fid import ImageTensors, fidelity
from dualerase.storage import file_digest, file_stamp


class EvalError(ValueError):
    """An evaluation resource that cannot be used; the message says what to do, in one line."""


def load_timm_classifier(name: str, weights: str | None = None,
                         num_classes: int | None = None) -> torch.nn.Module:
    """A timm classifier in eval mode, from a local weights file or the HF cache.

    Args:
        name: the timm model name (the protocol's is resnet34.tv_in1k).
        weights: a local weights file; None: the pretrained weights in the HF cache.
        num_classes: its class count; None: that of the weights file's head (a classifier of a
            model's own classes), else the pretrained one (ImageNet's 1000).

    Raises:
        EvalError: an unknown name, a missing file, or weights that do not load."""
    check_classifier(name, weights)
    if weights is not None and num_classes is None:
        num_classes = head_classes(name, weights)
    overlay = {"file": str(weights)} if weights else {}
    # declared in the pretrained config too, or timm would drop the head's weights
    if num_classes is not None:
        overlay["num_classes"] = num_classes
    try:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay or None,
            **({"num_classes": num_classes} if num_classes is not None else {})).eval()
    except Exception as e:
        lines = str(e).splitlines() or [""]
        why = next((line.strip() for line in lines
                    if "size mismatch" in line or "Missing key" in line), lines[0])
        if weights is not None:
            raise EvalError(f"eval.fa_weights {weights} does not load into timm {name} with "
                            f"{num_classes or 'its'} classes ({type(e).__name__}: {why[:240]}): "
                            "give weights of that architecture, with eval.fa_num_classes their "
                            "class count (null: read from the file)") from None
        raise EvalError(
            f"cannot load the {name} classifier ({type(e).__name__}: {why[:160]})"
            f": on a machine with network run `hf download timm/{name}` once, or set "
            "eval.fa_weights to a local weights file") from None


def head_classes(name: str, weights: str) -> int | None:
    """The class count of a weights file's classification head, if found.

    timm's pretrained config of `name` names the head; an unreadable file gives None."""
    cfg = get_pretrained_cfg(name)
    # "fc", "head", or several for distilled models
    heads = cfg.classifier if cfg is not None else None
    try:
        state = timm.models.load_state_dict(str(weights))
    except Exception:  # not readable: create_model then says why
        return None
    for head in [heads] if isinstance(heads, str) else list(heads or []):
        if f"{head}.weight" in state:
            return int(state[f"{head}.weight"].shape[0])
    return None


def check_classifier(name: str, weights: str | None) -> None:
    """Check the classifier's name and weights file without loading them (EvalError if wrong)."""
    if name not in timm.list_models(pretrained=True) and name not in timm.list_models():
        raise EvalError(f"eval.fa_classifier {name!r} is not a timm model name (the protocol uses "
                        "resnet34.tv_in1k)")
    if weights is not None and not Path(weights).is_file():
        raise EvalError(f"eval.fa_weights {weights} does not exist: give the classifier's weights "
                        "file (.safetensors, .pth or .bin) or null for the Hugging Face cache")


def check_reference(reference: Path, extractor_weights: str | None) -> None:
    """Check the FID reference folder and the extractor's weights file without reading them.

    Raises EvalError for a folder that is no reference folder, or a missing weights file."""
    if not (reference / "reference.json").is_file():
        raise EvalError(f"eval.fid_reference {reference} is not a reference folder: build one with "
                        "`fid-reference --data <train folder> --output <folder>`")
    if extractor_weights is not None and not Path(extractor_weights).is_file():
        raise EvalError(f"eval.fid_weights {extractor_weights} does not exist: give "
                        "torch-fidelity's Inception weights file "
                        "(pt_inception-2015-12-05-6726825d.pth) or null to download it")


class ImageNetScorer:
    """The ImageNet protocol, a `Scorer`: a timm classifier's accuracy, FID with torch-fidelity.

    Accuracy at `size` px (bilinear resize of the samples, ImageNet mean and std); FID of samples
    against the reference folder with torch-fidelity's feature extractor.

    Args:
        classifier: the timm classifier (`load_timm_classifier`).
        size: the resolution it classifies at.
        reference: the FID reference folder (fid-reference builds it).
        extractor: torch-fidelity's feature extractor name.
        extractor_weights: its weights file; None: downloaded.
        cache_root: where torch-fidelity caches the reference statistics.
        name: the classifier's timm name.
        classifier_weights: its weights file, if local.
        synsets: the model's class folders, to tell whether the reference left the forget class
            out.

    Raises:
        EvalError: the reference folder or the extractor cannot be used (checked at once, not
            after hours of sampling)."""

    def __init__(self, classifier: torch.nn.Module, *, size: int, reference: Path, extractor: str,
                 extractor_weights: str | None, cache_root: Path, name: str,
                 classifier_weights: str | None = None, synsets: list[str] | None = None):
        self.classifier, self.size, self.name, self.classifier_weights = (classifier, size, name,
                                                                          classifier_weights)
        # the model's class folders, to tell whether the reference left the forget class out
        self.synsets = synsets
        cfg = classifier.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self.reference, self.extractor, self.extractor_weights = (reference, extractor,
                                                                  extractor_weights)
        self.cache_root = cache_root
        check_reference(reference, extractor_weights)
        self.manifest = json.loads((reference / "reference.json").read_text())
        try:  # fail now, not after hours of sampling
            registry = torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY
            if extractor not in registry:
                raise EvalError(f"eval.fid_extractor {extractor!r} is not a torch-fidelity feature "
                                f"extractor (registered: {', '.join(sorted(registry))})")
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's download notice
                registry[extractor](
                    extractor, [registry[extractor].get_default_feature_layer_for_metric("fid")],
                    feature_extractor_weights_path=extractor_weights)
        except EvalError:
            raise
        except Exception as e:
            if extractor_weights is not None:
                raise EvalError(f"eval.fid_weights {extractor_weights} cannot be loaded as "
                                f"{extractor} weights ({type(e).__name__}): give an intact copy of "
                                "pt_inception-2015-12-05-6726825d.pth") from None
            raise EvalError(f"cannot load the {extractor} weights ({type(e).__name__}): without "
                            "network set eval.fid_weights to a local copy of "
                            "pt_inception-2015-12-05-6726825d.pth") from None

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
        """Softmax class probabilities of each image in [-1, 1], `batch_size` at a time."""
        device = next(self.classifier.parameters()).device
        probs = []
        for i in range(0, len(images), batch_size):
            x = F.interpolate(images[i:i + batch_size].float(), size=(self.size, self.size),
                              mode="bilinear", antialias=True, align_corners=False)
            x = ((x + 1) / 2 - self.mean) / self.std
            probs.append(self.classifier(x.to(device)).float().softmax(1).cpu())
        return torch.cat(probs)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The top class of each image in [-1, 1]."""
        return self.probabilities(images).argmax(1)

    @property
    def key(self) -> str:
        """Names all the scores depend on but the samples, by content.

        That is the reference statistics' key, the classifier and its weights."""
        ident = {"reference": self.reference_key, "classifier": self.name, "size": self.size,
                 "classifier_weights": (self.classifier_weights
                                        and file_digest(self.classifier_weights))}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def reference_key(self) -> str:
        """Names the reference folder's statistics, by content.

        That is its manifest (which records when it was built) and files (size and times), the
        extractor, and the content of the extractor's weights (other weights, other features)."""
        files = sorted(file_stamp(p)[1:] + (str(p.relative_to(self.reference)),)
                       for p in self.reference.rglob("*") if p.is_file())
        ident = {"manifest": self.manifest, "files": files, "extractor": self.extractor,
                 "weights": self.extractor_weights and file_digest(self.extractor_weights)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    def neighbours(self, forget_class: int, k: int) -> list[int]:
        """The k classes whose rows of the classifier's last layer are nearest `forget_class`'s.

        Nearest by cosine similarity."""
        weight = self.classifier.get_classifier().weight.detach().float()
        similarity = torch.nn.functional.cosine_similarity(weight, weight[forget_class][None],
                                                           dim=1)
        similarity[forget_class] = -2
        return similarity.topk(k).indices.tolist()

    def fidelity(self, samples: torch.Tensor, forget_class: int,
                 classes: list[int] | None = None) -> dict:
        """FID, KID, precision and recall (`fid.fidelity`) of uint8 samples against the reference.

        The folder's features are cached under a name made from `reference_key`, so rebuilt
        reference images or extractor weights get new ones. Of some `classes` only: EvalError, not
        supported (the reference folder mixes all retained classes)."""
        if classes is not None:
            raise EvalError("FID of a few classes needs a reference folder of just those classes, "
                            "which fid-reference does not build yet")
        return fidelity(
            ImageTensors(samples), str(self.reference), int(self.manifest["count"]),
            samples_find_deep=True,
            input2_cache_name=(f"dualerase-ref-{self.reference.name}-{self.reference_key}-"
                               f"{self.extractor}"),
            cuda=torch.cuda.is_available(), batch_size=100, feature_extractor=self.extractor,
            feature_extractor_weights_path=self.extractor_weights, cache_root=str(self.cache_root))

    def describe(self, forget_class: int) -> dict:
        """The classifier, feature extractor and reference set, as the protocol records them.

        The reference is flagged where it was not built without `forget_class`."""
        excluded = self.manifest.get("excluded", [])
        # a model of other classes than ImageNet's 1000
        if self.synsets and "excluded_folders" in self.manifest:
            excluded = [c for c, s in enumerate(self.synsets)
                        if s in self.manifest["excluded_folders"]]
        note = ("" if forget_class in excluded
                else " (WARNING: it was not built without the forget class)")
        return {
            "classifier": (f"timm {self.name} at {self.size} px (bilinear resize, ImageNet "
                           "mean/std)"),
            "feature_extractor": f"torch-fidelity {self.extractor}",
            "reference": f"{self.manifest['count']} real images of {self.manifest['classes']} "
                         f"classes in {self.reference}{note}",
        }
