"""Is the class really gone? Measurements beyond the protocol's forget accuracy (config section
`robustness`), made on the model before and after erasure with the evaluation's sampler and noise:

* leakage under the sampler's knobs: forget accuracy at other guidance scales (a class can hide at
  guidance 1 and return at DiTPipeline's 4.0), and the share of unconditional (null-class) samples
  the classifier calls the class, since guidance leans on the null branch for every class;
* collateral damage next to the class: retain accuracy and FID of its k nearest classes (ImageNet
  classes: their WordNet siblings, `data.wordnet`; other classes: those the classifier confuses
  most with it, `Scorer.neighbours`), next to the averages over all retained classes;
* the relearning attack (Meta-Unlearning, DiMRA): fine-tune a copy of the model on a few real
  images of the forget class and watch forget accuracy come back;
* the conditioning attack (UnlearnDiffAtk's question for a class-conditional DiT, as textual
  inversion): keep the weights, learn a new embedding for the class from its real images, and
  sample with it. An erasure that only unlinked the label from the concept fails it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path

import torch

from dualerase.config import Config
from dualerase.data.streams import stream_seed
from dualerase.data.wordnet import siblings
from dualerase.launch import processes
from dualerase.metrics.imagenet import EvalError
from dualerase.metrics.scorer import counts_as_forget
from dualerase.models.dit import embedders, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.runs.probe import ForgetProbe
from dualerase.runs.workload import Workload
from dualerase.sampling import class_labels, from_uint8, generate, to_uint8


def _images(model, w: Workload, cfg: Config, labels: torch.Tensor, guidance: float,
            cache_dir: Path | None, name: str, progress: bool) -> torch.Tensor | None:
    """8-bit samples for `labels` at `guidance`, with the evaluation's noise; None off the main."""
    images = generate(model, w.vae, dataclasses.replace(cfg.sample, guidance=guidance), labels,
                      precision=cfg.compute.mixed_precision, seed=cfg.seed,
                      cache_dir=None if cache_dir is None else cache_dir / name, desc=name,
                      progress=progress)
    return None if images is None else from_uint8(to_uint8(images))


def leakage(model, w: Workload, cfg: Config, forget_class: int, progress: bool = True,
            cache_dir: Path | None = None) -> dict | None:
    """Forget accuracy at other guidance scales, and the null class's share called the class.

    Forget accuracy at every robustness.guidances scale and, with robustness.unconditional, the
    share of null-class samples called the forget class; {} when neither is asked for. Every
    process samples its share of every set (None on the processes other than the main one, which
    scores)."""
    robust_cfg = cfg.robustness
    forget = class_labels(w.num_classes, robust_cfg.samples, only=forget_class)
    guided = {g: _images(model, w, cfg, forget, g, cache_dir, f"robustness-guidance-{g:g}",
                         progress)
              for g in robust_cfg.guidances}
    unconditioned = None
    if robust_cfg.unconditional:  # the null class
        unconditioned = _images(model, w, cfg, torch.full((robust_cfg.samples,), w.num_classes),
                                1.0, cache_dir, "robustness-unconditional", progress)
    if not processes().is_main_process:
        return None

    def counted(images):
        """Which of `images` count as the forget class, by the protocol's rule."""
        return counts_as_forget(w.scorer.probabilities(images), images, forget_class, cfg.eval,
                                w.scorer)

    out = {}
    if guided:
        out["forget_accuracy_at_guidance"] = {f"{g:g}": counted(x).float().mean().item()
                                              for g, x in guided.items()}
    # by the top class alone: the question is which class the unconditioned model draws
    if robust_cfg.unconditional:
        top = w.scorer.probabilities(unconditioned).argmax(1)
        out["unconditional_forget_share"] = (top == forget_class).float().mean().item()
    return out


def neighbours(w: Workload, cfg: Config, forget_class: int, images: torch.Tensor,
               labels: torch.Tensor, predicted: torch.Tensor) -> dict:
    """Retain accuracy and FID of the robustness.neighbours classes nearest the forget class.

    From the evaluation's retain samples (uint8 `images` with their `labels` and the classifier's
    `predicted` classes); {} when not asked."""
    k = min(cfg.robustness.neighbours, w.num_classes - 1)
    if not k:
        return {}
    wordnet = siblings(w.classes.synsets, forget_class, k)  # ImageNet classes: WordNet siblings
    near = wordnet or w.scorer.neighbours(forget_class, k)
    mine = torch.isin(labels, torch.tensor(near))
    accuracy = None  # when none of them was drawn
    if mine.any():
        accuracy = (predicted[mine] == labels[mine]).float().mean().item()
    out = {"neighbour_classes": near, "neighbours_by": "WordNet" if wordnet else "classifier",
           "neighbour_retain_accuracy": accuracy}
    try:
        out["neighbour_fid"] = w.scorer.fidelity(images[mine], forget_class, classes=near)["fid"]
    except EvalError as err:
        out["neighbour_fid"], out["neighbour_fid_error"] = None, str(err)
    return out


@contextlib.contextmanager
def _seeded(model, seed: int):
    """torch's global generators forked and seeded with `seed` (DiT's loss draws from them)."""
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _chosen(w: Workload, cfg: Config, forget_class: int, k: int, gen: torch.Generator):
    """k real images of the forget class (in the model's input space) and their labels.

    Drawn with `gen`. The run has prepared the data already; only the main process gets here."""
    real = w.real_data(forget_class, cfg, False)
    chosen = torch.randperm(len(real.forget_x), generator=gen)[:k]
    return real.forget_x[chosen], real.forget_y[chosen]


def _step(model, opt, x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator,
          loss: DiTLoss):
    """One optimizer step on DiT's loss of a batch drawn with `gen` from images `x`, labels `y`."""
    batch = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
    opt.zero_grad(set_to_none=True)
    loss(model, (x[batch], y[batch])).backward()
    opt.step()


RELEARNED = 0.5  # "steps to relearn": the first probed step whose forget accuracy reaches this


def relearn(model, w: Workload, cfg: Config, forget_class: int) -> dict:
    """The relearning attack: forget accuracy as a copy is fine-tuned on k real forget images.

    For each k of robustness.relearn_images: a copy of the model fine-tuned with DiT's loss and
    AdamW (robustness.relearn_lr, weight decay 0) for robustness.relearn_steps steps of
    relearn_batch images drawn from k real images of the forget class; forget accuracy by the
    probe (`ForgetProbe`: erase.probe_samples at erase.probe_steps, its own noise) at every step
    of robustness.relearn_at. Deterministic given the seed; {} when not asked.

    Returns:
        Per k: that curve, the steps to relearn (the first probed step at FA >= RELEARNED; null if
        none) and the area under the curve (mean FA over the steps, trapezoids)."""
    robust_cfg = cfg.robustness
    if not robust_cfg.relearn_images:
        return {}
    probe, loss = ForgetProbe(w, cfg, forget_class), DiTLoss(make_scheduler())
    out = {}
    for k in robust_cfg.relearn_images:
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "relearn") + k)
        x, y = _chosen(w, cfg, forget_class, k, gen)
        attacked = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(attacked.parameters(), lr=robust_cfg.relearn_lr, weight_decay=0.0)
        curve = {}
        with _seeded(model, stream_seed(cfg.seed, "relearn") + k):
            for step in range(robust_cfg.relearn_steps + 1):
                if step in robust_cfg.relearn_at:
                    curve[step] = probe(attacked.eval())
                    attacked.train()
                if step < robust_cfg.relearn_steps:
                    _step(attacked, opt, x, y, robust_cfg.relearn_batch, gen, loss)
        steps = sorted(curve)
        if len(steps) > 1:
            area = sum((b - a) * (curve[a] + curve[b]) / 2 for a, b in zip(steps, steps[1:]))
            area /= steps[-1] - steps[0]
        else:
            area = curve[steps[0]]
        out[str(k)] = {"images": len(x), "forget_accuracy": {str(s): curve[s] for s in steps},
                       "steps_to_relearn": next((s for s in steps if curve[s] >= RELEARNED), None),
                       "area": area}
    return {"relearn": out}


def fitted_embedding(model, x: torch.Tensor, y: torch.Tensor, forget_class: int, start: int,
                     cfg: Config, gen: torch.Generator):
    """A frozen copy of the model with a new, fitted embedding row for the forget class.

    Its forget-class row of every class embedder (one for tied embedders) is replaced by a
    trainable vector, started from row `start` and fitted with Adam (robustness.attack_lr,
    robustness.attack_steps batches of robustness.relearn_batch) to DiT's loss on images `x` of
    labels `y`."""
    robust_cfg = cfg.robustness
    attacked = copy.deepcopy(model).eval().requires_grad_(False)
    tables = [embedder.class_embedder.embedding_table for embedder in embedders(attacked)]
    tables = list({id(t): t for t in tables}.values())  # tied embedders share one table
    rows = [torch.nn.Parameter(t.weight[start].detach().clone()) for t in tables]
    for table, row in zip(tables, rows):  # the forget class's label now looks up the trainable row
        table.register_forward_hook(
            lambda m, inputs, out, row=row: torch.where((inputs[0] == forget_class)[:, None],
                                                        row.to(out.dtype), out))
    loss, opt = DiTLoss(make_scheduler()), torch.optim.Adam(rows, lr=robust_cfg.attack_lr)
    with _seeded(model, stream_seed(cfg.seed, "attack")):
        for _ in range(robust_cfg.attack_steps):
            _step(attacked, opt, x, y, robust_cfg.relearn_batch, gen, loss)
    return attacked


def unlinked(model, forget_class: int, other: int):
    """The control the conditioning attack must fail: the forget class's label unlinked.

    A copy of the model whose `forget_class` rows of the class embedders are `other`'s, every other
    weight kept."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for embedder in embedders(model):
            table = embedder.class_embedder.embedding_table
            table.weight[forget_class] = table.weight[other]
    return model


def conditioning_attack(model, w: Workload, cfg: Config, forget_class: int) -> dict:
    """The conditioning attack: forget accuracy with a class embedding fitted to real images.

    With robustness.attack_steps > 0: `fitted_embedding` from the forget class's own row or the
    null class's (robustness.attack_start), on robustness.attack_images real images of the class;
    forget accuracy by the probe with the class's own row and with the fitted one. Deterministic
    given the seed; {} when off."""
    robust_cfg = cfg.robustness
    if not robust_cfg.attack_steps:
        return {}
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "attack"))
    x, y = _chosen(w, cfg, forget_class, robust_cfg.attack_images, gen)
    # the class's own row, or the null class's
    start = forget_class if robust_cfg.attack_start == "class" else w.num_classes
    attacked = fitted_embedding(model, x, y, forget_class, start, cfg, gen)
    probe = ForgetProbe(w, cfg, forget_class)
    return {"conditioning_attack": {"start": robust_cfg.attack_start,
                                    "steps": robust_cfg.attack_steps, "images": len(x),
                                    "forget_accuracy_before": probe(model),
                                    "forget_accuracy": probe(attacked)}}
