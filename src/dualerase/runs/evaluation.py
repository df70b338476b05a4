"""The evaluation protocol: what every number is measured with, the scores of a model, and the
base model's cached scores."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from dualerase.config import Config
from dualerase.data.streams import stream_seed
from dualerase.launch import main_decides, processes
from dualerase.metrics.fid import FIDELITY, KID_RULES
from dualerase.metrics.scorer import counts_as_forget, fa_rule, kid_scorer
from dualerase.models.dit import SCHEDULER_NAMES, describe_model, learns_sigma
from dualerase.reports.summary import save_samples
from dualerase.runs.robustness import conditioning_attack, leakage, neighbours, relearn
from dualerase.runs.workload import Workload
from dualerase.sampling import class_labels, from_uint8, generate, to_uint8
from dualerase.storage import atomic_write_json, cache_root, fingerprint

SCORES = ("forget_accuracy", "forget_accuracy_published", "forget_not_a_class",
          "forget_probability", "forget_entropy", "retain_accuracy", "fid", "kid", "precision",
          "recall")


FAST_STEPS = 50  # eval.protocol fast: at most this many steps of the configured sampler


def evaluation_config(cfg: Config) -> Config:
    """The config the evaluation samples and scores under (eval.protocol).

    `cfg` itself for eval.protocol full; for fast, the same sampler at no more than FAST_STEPS
    steps and a quarter of every sample count (FID of fewer samples reads higher: compare fast
    numbers with fast numbers only). The erasure and the method's replay keep the configured
    sampler. The sampler stays the configured one: on digits, DDIM and DPM-Solver++ read the
    forget accuracy of partly erased models far lower than DDPM does (0.005 against 0.195), DDPM
    at 50 steps within 0.05 (docs/performance.md)."""
    if cfg.eval.protocol == "full":
        return cfg
    eval_cfg = cfg.eval
    return dataclasses.replace(
        cfg, sample=dataclasses.replace(cfg.sample, steps=min(cfg.sample.steps, FAST_STEPS)),
        eval=dataclasses.replace(eval_cfg, forget_samples=_quarter(eval_cfg.forget_samples),
                                 retain_samples=_quarter(eval_cfg.retain_samples),
                                 retain_samples_per_class=_quarter(
                                     eval_cfg.retain_samples_per_class)))


def _quarter(n: int | None) -> int | None:
    """A quarter of a sample count, at least 1; None stays None."""
    return None if n is None else max(1, n // 4)


def protocol(cfg: Config, w: Workload, forget_class: int) -> dict:
    """Everything needed to reproduce or compare the numbers."""
    if cfg.eval.protocol == "full":
        name = "full"
    else:
        name = "fast: for quick looks only; published comparisons need the full protocol"
    if cfg.sample.scheduler == "ddpm" and learns_sigma(w.model):
        variance = "learned variance"
    else:
        variance = "fixed variance"
    if cfg.eval.retain_samples is None:
        retain_drawn = f"{cfg.eval.retain_samples_per_class} per retained class"
    else:
        retain_drawn = "drawn uniformly at random from the retained classes"
    return {
        "protocol": name,
        "sampler": f"{SCHEDULER_NAMES[cfg.sample.scheduler]} (diffusers, " + variance + ")",
        "steps": cfg.sample.steps,
        "guidance": cfg.sample.guidance,
        "guidance_channels": cfg.sample.guidance_channels or "all",
        "timestep_spacing": cfg.sample.timestep_spacing,
        # each batch's noise is keyed by its first sample
        "sample_batch_size": cfg.sample.batch_size,
        **describe_model(w.model),  # embedders, timestep_shift, norm_eps, model_parameters
        "precision": precision_of(cfg),
        "cpu_threads": torch.get_num_threads(),
        "forget_samples": cfg.eval.forget_samples,
        "forget_rule": fa_rule(cfg.eval),
        "forget_rule_published": "top class among the data set's classes",
        "retain_samples": len(retain_labels(w, cfg, forget_class)),
        "retain_labels": retain_drawn,
        "kid": KID_RULES["raw"],  # unless the scorer says otherwise
        **kid_scorer(w.scorer, cfg.eval).describe(forget_class),
        "seed": cfg.seed,
        "versions": versions(),
        "device": device_name(),
    }


def precision_of(cfg: Config) -> str:
    """The arithmetic the samples are computed in, as the protocol states it."""
    if cfg.compute.mixed_precision == "bf16":
        return "bf16 autocast"
    if cfg.compute.tf32 and processes().device.type == "cuda":
        return "float32, TF32 matmuls"
    return "float32"


VERSIONED = ("torch", "diffusers", "torch-fidelity", "timm")  # what a score can drift with


def versions() -> dict:
    """The installed version of each library that numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    def one(name):
        """The installed version of `name`, or "not installed"."""
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {name: one(name) for name in VERSIONED}


def device_name() -> str:
    """The device this process computes on, by name (a GPU's model, or the CPU's)."""
    import platform

    device = processes().device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def retain_labels(w: Workload, cfg: Config, forget_class: int) -> torch.Tensor:
    """Labels of the retain samples, every class but the forget class.

    eval.retain_samples_per_class of each other class, or eval.retain_samples drawn uniformly at
    random (seeded) from the other classes."""
    if cfg.eval.retain_samples is None:
        return class_labels(w.num_classes, cfg.eval.retain_samples_per_class, exclude=forget_class)
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "retain_labels"))
    labels = torch.randint(0, w.num_classes - 1, (cfg.eval.retain_samples,), generator=gen)
    return labels + (labels >= forget_class).long()  # skip the forget class


def evaluate(model, w: Workload, cfg: Config, forget_class: int, progress: bool = True,
             desc: str = "", cache_dir: Path | None = None, save_to: Path | None = None) -> dict:
    """The protocol's scores of `model`, and the robustness measurements the config asks for.

    Forget accuracy, the forget class's mean probability and the entropy of the predicted
    distribution on its samples (as the published evaluator reports), retain accuracy (per class
    too) and FID of the retained classes' samples. Samples are scored at 8-bit precision.

    Args:
        model: the model to score.
        w: the base model's workload (classes, scorer).
        cfg: the evaluation's config (`evaluation_config`).
        forget_class: the erased class.
        progress: show progress bars.
        desc: the progress bars' name for the samples.
        cache_dir: where finished sample batches survive a kill; None keeps none.
        save_to: also write the samples there as PNG folders and ADM-style .npz files
            (`save_samples`).

    Returns:
        The scores on the main process, which scores; None on the others (every process samples
        its share)."""
    fl = class_labels(w.num_classes, cfg.eval.forget_samples, only=forget_class)
    rl = retain_labels(w, cfg, forget_class)
    labels = torch.cat([fl, rl])
    images = generate(model, w.vae, cfg.sample, labels, precision=cfg.compute.mixed_precision,
                      seed=cfg.seed, cache_dir=cache_dir, desc=f"sample {desc}", progress=progress)
    # every process samples its share
    robust = leakage(model, w, cfg, forget_class, progress, cache_dir)
    if images is None:  # not the main process, which scores
        return None
    images = to_uint8(images)
    scored = from_uint8(images)  # what every score reads: the 8-bit images
    probs = w.scorer.probabilities(scored)
    pred = probs.argmax(1)
    forget = probs[:len(fl)]
    per_class = {str(c): (pred[labels == c] == c).float().mean().item()
                 for c in labels.unique().tolist()}
    if save_to is not None:
        save_samples(save_to, {"forget": (images[:len(fl)], fl), "retain": (images[len(fl):], rl)})
    try:
        quality = kid_scorer(w.scorer, cfg.eval).fidelity(images[len(fl):], forget_class)
        why = ""
    except (np.linalg.LinAlgError, ValueError) as err:
        # statistics with inf or NaN: FID is undefined, not a crash
        quality = dict.fromkeys(FIDELITY, math.nan)
        why = f" ({type(err).__name__}: {str(err).splitlines()[0]})"
    fid = quality["fid"]
    counted = counts_as_forget(forget, scored[:len(fl)], forget_class, cfg.eval, w.scorer)
    # the published rule: the top class among the data set's classes alone
    published = (forget[:, :w.num_classes].argmax(1) == forget_class).float().mean().item()
    # the share the classifier calls none of the classes ("not a digit"); null for a classifier
    # without that class
    not_a_class = None
    if forget.shape[1] > w.num_classes:
        not_a_class = (forget.argmax(1) >= w.num_classes).float().mean().item()
    scores = {
        "forget_accuracy": counted.float().mean().item(),
        "forget_accuracy_published": published,
        "forget_not_a_class": not_a_class,
        "forget_probability": forget[:, forget_class].mean().item(),
        "forget_entropy": torch.special.entr(forget).sum(1).mean().item(),  # nats
        "retain_accuracy": (pred[len(fl):] == rl).float().mean().item(),
        # JSON has no inf or nan: null, and the reason next to it
        **{k: v if math.isfinite(v) else None for k, v in quality.items()},
        "per_class_accuracy": per_class,
    }
    robust |= neighbours(w, cfg, forget_class, images[len(fl):], rl, pred[len(fl):])
    robust |= relearn(model, w, cfg, forget_class)
    robust |= conditioning_attack(model, w, cfg, forget_class)
    if robust:
        scores["robustness"] = robust
    if not math.isfinite(fid):
        scores["fid_error"] = (f"not finite (torch-fidelity gave {fid}{why}): the features of the "
                               "samples or of the reference are degenerate, e.g. NaN or constant "
                               "images, or too few distinct samples")
    return scores


def evaluate_base(w: Workload, cfg: Config, forget_class: int, progress: bool = True,
                  job: Path | None = None) -> dict:
    """The base model's scores, cached by model, protocol, seed and class.

    They do not change between erasures. Samples in progress are kept per `job` (the output
    folder), so that concurrent jobs never share a folder."""
    key = fingerprint({"model": w.model_id, "protocol": protocol(cfg, w, forget_class),
                       "class": forget_class, "sample": dataclasses.asdict(cfg.sample),
                       "eval": dataclasses.asdict(cfg.eval),
                       "robustness": dataclasses.asdict(cfg.robustness),
                       "scorer": w.scorer.key, "scored_at": "uint8", "scores": SCORES})
    path = cache_root() / "evals" / f"{key}.json"
    if not main_decides(path.exists()):
        samples = path.with_name(f"{key}-{fingerprint(str((job or Path()).resolve()))}")
        scores = evaluate(w.model, w, cfg, forget_class, progress, desc="before", cache_dir=samples)
        if processes().is_main_process:
            atomic_write_json(path, scores)
            shutil.rmtree(samples, ignore_errors=True)
        processes().wait_for_everyone()
    return json.loads(path.read_text())


def grid_classes(w: Workload, cfg: Config, forget_class: int) -> list[int]:
    """The classes grid.png shows: all, or the forget class and the lowest others to a limit.

    The limit is eval.grid_classes."""
    if w.num_classes <= cfg.eval.grid_classes:
        return list(range(w.num_classes))
    others = [c for c in range(w.num_classes) if c != forget_class]
    return sorted([forget_class] + others[:cfg.eval.grid_classes - 1])


def base_grid_cache(w: Workload, cfg: Config, classes: list[int]) -> Path:
    """Where the base model's grid samples are kept across runs.

    Keyed by model, sampler, seed and classes: a benchmark samples them once, not once per method,
    mode and class."""
    key = fingerprint({"model": w.model_id, "sample": dataclasses.asdict(cfg.sample),
                       "seed": cfg.seed, "classes": classes, "per_class": cfg.eval.grid_per_class,
                       "precision": cfg.compute.mixed_precision})
    return cache_root() / "evals" / f"base-grid-{key}"


def grid_images(model, w: Workload, cfg: Config, classes: list[int], progress: bool = True,
                cache_dir: Path | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`grid_per_class` samples of each class, with the same noise for every model (rows compare).

    The images only on the main process, which draws the grid (None on the others)."""
    labels = torch.tensor(classes).repeat_interleave(cfg.eval.grid_per_class)
    images = generate(model, w.vae, cfg.sample, labels, precision=cfg.compute.mixed_precision,
                      seed=cfg.seed, cache_dir=cache_dir, desc="sample grid", progress=progress)
    return (None if images is None else to_uint8(images)), labels
