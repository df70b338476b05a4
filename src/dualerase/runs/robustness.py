"""Is the class really gone? Measurements beyond the protocol's forget accuracy (config section `robustness`), made on
the model before and after erasure with the evaluation's sampler and noise:

* leakage under the sampler's knobs: forget accuracy at other guidance scales (a class can hide at guidance 1 and
  return at DiTPipeline's 4.0), and the share of unconditional (null-class) samples the classifier calls the class,
  since guidance leans on the null branch for every class;
* collateral damage next to the class: retain accuracy and FID of the k classes the classifier confuses most with the
  forget class (`Scorer.neighbours`), next to the averages over all retained classes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from dualerase.config import Config
from dualerase.metrics.imagenet import EvalError
from dualerase.runs.evaluation import counts_as_forget
from dualerase.runs.workload import Workload
from dualerase.sampling import class_labels, from_uint8, generate, to_uint8


def _images(model, w: Workload, cfg: Config, labels: torch.Tensor, guidance: float, cache_dir: Path | None,
            name: str, progress: bool) -> torch.Tensor | None:
    """8-bit samples for `labels` at `guidance`, with the evaluation's noise; None on processes other than the main."""
    images = generate(model, w.vae, dataclasses.replace(cfg.sample, guidance=guidance), labels,
                      precision=cfg.compute.mixed_precision, seed=cfg.seed,
                      cache_dir=None if cache_dir is None else cache_dir / name, desc=name, progress=progress)
    return None if images is None else from_uint8(to_uint8(images))


def leakage(model, w: Workload, cfg: Config, forget_class: int, progress: bool = True,
            cache_dir: Path | None = None) -> dict | None:
    """Forget accuracy at every robustness.guidances scale and, with robustness.unconditional, the share of null-class
    samples called the forget class; {} when neither is asked for."""
    r, out = cfg.robustness, {}
    if r.guidances:
        out["forget_accuracy_at_guidance"] = {}
    for g in r.guidances:
        labels = class_labels(w.num_classes, r.samples, only=forget_class)
        images = _images(model, w, cfg, labels, g, cache_dir, f"robustness-guidance-{g:g}", progress)
        if images is None:
            return None
        probs = w.scorer.probabilities(images)
        counted = counts_as_forget(probs, images, forget_class, cfg.eval, w.scorer)
        out["forget_accuracy_at_guidance"][f"{g:g}"] = counted.float().mean().item()
    if r.unconditional:
        labels = torch.full((r.samples,), w.num_classes)  # the null class: the model unconditioned
        images = _images(model, w, cfg, labels, 1.0, cache_dir, "robustness-unconditional", progress)
        if images is None:
            return None
        top = w.scorer.probabilities(images).argmax(1)
        out["unconditional_forget_share"] = (top == forget_class).float().mean().item()
    return out


def neighbours(w: Workload, cfg: Config, forget_class: int, images: torch.Tensor, labels: torch.Tensor,
               predicted: torch.Tensor) -> dict:
    """Retain accuracy and FID of the robustness.neighbours classes nearest the forget class, from the evaluation's
    retain samples (uint8 `images` with their `labels` and the classifier's `predicted` classes); {} when not asked."""
    k = min(cfg.robustness.neighbours, w.num_classes - 1)
    if not k:
        return {}
    near = w.scorer.neighbours(forget_class, k)
    mine = torch.isin(labels, torch.tensor(near))
    accuracy = (predicted[mine] == labels[mine]).float().mean().item() if mine.any() else None  # none drawn
    out = {"neighbour_classes": near, "neighbour_retain_accuracy": accuracy}
    try:
        out["neighbour_fid"] = w.scorer.fidelity(images[mine], forget_class, classes=near)["fid"]
    except EvalError as e:
        out["neighbour_fid"], out["neighbour_fid_error"] = None, str(e)
    return out
