"""What a run will do, before it does it: the resolved config (--print-config) and the network passes of each phase
(--dry-run)."""
from __future__ import annotations

import math
import time

import torch
import yaml

from dualerase.config import Config, to_dict
from dualerase.runs.evaluation import evaluation_config


def config_text(cfg: Config) -> str:
    """The resolved config, every key with its value (defaults included), as YAML that --config reads back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def passes(cfg: Config, num_classes: int, grid_classes: int) -> list[tuple[str, int, int]]:
    """(phase, forward passes, backward passes) of one erase-class run, one pass being one image (or latent) through
    the network: a batch of B counts B, a guided sampling step counts 2 per image (conditional and null class).
    The base model's evaluation and grid are cached after the first run with the same model, protocol, seed and
    class; so is the method's preparation (same method settings)."""
    m, e, s = cfg.method, cfg.erase, cfg.sample
    ecfg = evaluation_config(cfg)  # eval.protocol fast: fewer steps and samples
    es, ev = ecfg.sample, ecfg.eval
    guided = 1 if s.guidance == 1.0 else 2
    steps, eval_steps = s.steps * guided, es.steps * guided
    others = num_classes - 1
    if m.name == "sfron":  # a Fisher diagonal on forget samples and one on retain samples
        prepare = [("method preparation (Fisher diagonals)", 2 * m.grad_samples, 2 * m.grad_samples)]
    elif m.name == "salun":  # guided loss: conditional and null class in one batch, per saliency batch
        n = math.ceil(m.grad_samples / m.saliency_batch) * m.saliency_batch
        prepare = [("method preparation (saliency)", 2 * n, 2 * n)]
    elif m.name == "sa":  # replay samples from the original model, then the timestep-summed Fisher
        prepare = [("method preparation (replay samples)", m.replay_per_class * others * steps, 0),
                   ("method preparation (Fisher)", m.grad_samples * m.fisher_timesteps,
                    m.grad_samples * m.fisher_timesteps)]
    else:
        prepare = []
    per_step = (e.forget_steps + e.retain_steps) * e.batch_size
    matched = e.forget_steps * e.batch_size if m.name == "salun" else 0  # SalUn's frozen pseudo-label target
    retain_samples = ev.retain_samples or ev.retain_samples_per_class * others
    evaluation = (ev.forget_samples + retain_samples) * eval_steps
    r = cfg.robustness  # its samples at each guidance scale (2 passes a step when guided) and unconditional ones
    robust = r.samples * es.steps * (sum(1 if g == 1.0 else 2 for g in r.guidances) + r.unconditional)
    probe = e.probe_samples * e.probe_steps * guided  # one forget-accuracy probe
    trained = len(r.relearn_images) * r.relearn_steps * r.relearn_batch + r.attack_steps * r.relearn_batch
    robust += trained + probe * (len(r.relearn_images) * len(r.relearn_at) + 2 * (r.attack_steps > 0))
    return [
        *first_use(cfg),
        *prepare,
        (f"erasure ({e.outer_steps} outer steps)", e.outer_steps * (per_step + matched), e.outer_steps * per_step),
        ("evaluation before (cached after a first run)", evaluation, 0),
        ("evaluation after", evaluation, 0),
        *([("robustness before (cached after a first run)", robust, trained), ("robustness after", robust, trained)]
          if robust else []),
        ("grid before (cached after a first run)", grid_classes * ev.grid_per_class * eval_steps, 0),
        ("grid after", grid_classes * ev.grid_per_class * eval_steps, 0),
    ]


def first_use(cfg: Config) -> list[tuple[str, int, int]]:
    """The digits models a run trains before anything else when they are not cached yet (once per recipe)."""
    if cfg.model.source != "digits":
        return []
    from dualerase.models.digits import classifier_path, dit_folder

    d, c = cfg.digits, cfg.classifier
    out = [] if (dit_folder(d) / "config.json").exists() else \
        [(f"digits DiT training, once ({d.steps} steps; then cached)", d.steps * d.batch_size, d.steps * d.batch_size)]
    if not classifier_path(c).exists():  # its own small CNN, on the 1,437 train digits and junk
        n = c.epochs * round(1437 * (1 + (c.junk_share if c.not_a_digit else 0)))
        out.append((f"digits classifier training, once ({c.epochs} epochs; then cached)", n, n))
    return out


def cells_passes(cells: list[tuple[tuple, Config]], num_classes: int, grid_classes: int) -> list[tuple[str, int, int]]:
    """The phases of several erase-class runs summed, each given as (fid-bench's cell: (method, optimizer, class,
    seed, ...), its config): the one-time training of the digits models counted once, the base model's cached phases
    once per class and seed."""
    totals: dict[str, tuple[int, int]] = {}
    seen = set()
    for cell, cfg in cells:
        for name, fwd, bwd in passes(cfg, num_classes, grid_classes):
            once = name if "once" in name else (cell[2], cell[3], name) if "cached" in name else None
            if once is not None and once in seen:
                continue
            seen.add(once)
            f, b = totals.get(name, (0, 0))
            totals[name] = (f + fwd, b + bwd)
    return [(name, f, b) for name, (f, b) in totals.items()]


def passes_table(rows: list[tuple[str, int, int]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'phase':{width}s}  {'forward':>14s}  {'backward':>14s}"]
    lines += [f"{name:{width}s}  {fwd:>14,d}  {bwd:>14,d}" for name, fwd, bwd in rows]
    lines.append(f"{'total':{width}s}  {sum(r[1] for r in rows):>14,d}  {sum(r[2] for r in rows):>14,d}")
    return "\n".join(lines)


def _per_image(fn, n: int, repeats: int = 3) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / n


def throughput(cfg: Config) -> dict[str, float]:
    """Seconds per image measured now, on this machine with compute.threads, at erase.batch_size images a batch: the
    digits DiT's forward pass without gradients (sampling), its forward and backward pass of DiT's loss (training,
    erasure, attacks), and the digits classifier's forward and backward pass (its training). Random weights of the
    recipe's shapes: time does not depend on their values."""
    from dualerase.metrics.classifier import DigitsNet
    from dualerase.models.digits import NUM_CLASSES, SIZE
    from dualerase.models.dit import build_dit, make_scheduler
    from dualerase.models.loss import DiTLoss

    d, n, threads = cfg.digits, cfg.erase.batch_size, torch.get_num_threads()
    torch.set_num_threads(cfg.compute.threads or threads)
    try:
        model = build_dit(num_classes=NUM_CLASSES, sample_size=SIZE, in_channels=1, patch_size=d.patch_size,
                          layers=d.layers, heads=d.heads, head_dim=d.head_dim)
        x, y, t = torch.randn(n, 1, SIZE, SIZE), torch.randint(0, NUM_CLASSES, (n,)), torch.randint(0, 1000, (n,))
        with torch.no_grad():
            forward = _per_image(lambda: model(x, timestep=t, class_labels=y), n)
        loss, net = DiTLoss(make_scheduler()), DigitsNet()
        return {"forward": forward, "backward": _per_image(lambda: loss(model, (x, y)).backward(), n),
                "classifier": _per_image(lambda: net(x).logsumexp(1).mean().backward(), n)}
    finally:
        torch.set_num_threads(threads)


def estimate(cfg: Config, rows: list[tuple[str, int, int]]) -> str:
    """The dry run's time line: for the digits default, each phase's passes at the throughput measured now (a pass
    with a backward one at the forward-and-backward rate); the rest (scoring, FID features, Python) is not counted."""
    if cfg.model.source != "digits":
        return ("time: not estimated, no throughput has been measured for this model and device (after a run, "
                "metrics.json `timings` has each phase's seconds)")
    rate = throughput(cfg)

    def seconds(name: str, fwd: int, bwd: int) -> float:
        return bwd * rate["classifier" if "classifier" in name else "backward"] + (fwd - bwd) * rate["forward"]

    total = sum(seconds(*r) for r in rows)
    cached = sum(seconds(*r) for r in rows if "cached" in r[0])
    return (f"time: about {total / 60:.1f} min on this machine ({cached / 60:.1f} min of it in phases cached after a "
            f"first run), from {rate['forward'] * 1e6:.0f} us per image forward and {rate['backward'] * 1e6:.0f} us "
            f"forward and backward of the digits DiT measured just now at batch {cfg.erase.batch_size} with "
            f"{cfg.compute.threads or torch.get_num_threads()} threads; scoring and FID features not counted")
