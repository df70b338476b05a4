"""What a run will do, before it does it: the resolved config (--print-config) and the network
passes of each phase, with a time estimate (--dry-run)."""
from __future__ import annotations

import math
import time

import torch
import yaml

from dualerase.config import Config, to_dict
from dualerase.runs.evaluation import evaluation_config


def config_text(cfg: Config) -> str:
    """The resolved config, every key with its value (defaults included), as YAML --config reads."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def passes(cfg: Config, num_classes: int, grid_classes: int) -> list[tuple[str, int, int]]:
    """(phase, forward passes, backward passes) of one erase-class run.

    One pass is one image (or latent) through the network: a batch of B counts B, a guided
    sampling step counts 2 per image (conditional and null class). The base model's evaluation and
    grid are cached after the first run with the same model, protocol, seed and class; so is the
    method's preparation (same method settings)."""
    method_cfg, erase_cfg, sample_cfg = cfg.method, cfg.erase, cfg.sample
    eval_run = evaluation_config(cfg)  # eval.protocol fast: fewer steps and samples
    eval_sample, eval_cfg = eval_run.sample, eval_run.eval
    guided = 1 if sample_cfg.guidance == 1.0 else 2
    steps, eval_steps = sample_cfg.steps * guided, eval_sample.steps * guided
    others = num_classes - 1
    grad_samples = method_cfg.grad_samples
    if method_cfg.name == "sfron":  # a Fisher diagonal on forget samples and one on retain samples
        prepare = [("method preparation (Fisher diagonals)", 2 * grad_samples, 2 * grad_samples)]
    elif method_cfg.name == "salun":  # guided loss: conditional and null class, per saliency batch
        n = math.ceil(grad_samples / method_cfg.saliency_batch) * method_cfg.saliency_batch
        prepare = [("method preparation (saliency)", 2 * n, 2 * n)]
    elif method_cfg.name == "sa":  # replay samples from the original model, then the Fisher
        fisher = grad_samples * method_cfg.fisher_timesteps
        prepare = [("method preparation (replay samples)",
                    method_cfg.replay_per_class * others * steps, 0),
                   ("method preparation (Fisher)", fisher, fisher)]
    else:
        prepare = []
    per_step = (erase_cfg.forget_steps + erase_cfg.retain_steps) * erase_cfg.batch_size
    matched = 0
    if method_cfg.name == "salun":  # SalUn's frozen pseudo-label target
        matched = erase_cfg.forget_steps * erase_cfg.batch_size
    retain_samples = eval_cfg.retain_samples or eval_cfg.retain_samples_per_class * others
    evaluation = (eval_cfg.forget_samples + retain_samples) * eval_steps
    robust_cfg = cfg.robustness  # samples at each guidance (2 passes a step when guided), unguided
    scales = sum(1 if g == 1.0 else 2 for g in robust_cfg.guidances) + robust_cfg.unconditional
    robust = robust_cfg.samples * eval_sample.steps * scales
    probe = erase_cfg.probe_samples * erase_cfg.probe_steps * guided  # one forget-accuracy probe
    trained = (len(robust_cfg.relearn_images) * robust_cfg.relearn_steps * robust_cfg.relearn_batch
               + robust_cfg.attack_steps * robust_cfg.relearn_batch)
    probes = len(robust_cfg.relearn_images) * len(robust_cfg.relearn_at)
    robust += trained + probe * (probes + 2 * (robust_cfg.attack_steps > 0))
    outer = erase_cfg.outer_steps
    grid = grid_classes * eval_cfg.grid_per_class * eval_steps
    robustness = []
    if robust:
        robustness = [("robustness before (cached after a first run)", robust, trained),
                      ("robustness after", robust, trained)]
    return [
        *first_use(cfg),
        *prepare,
        (f"erasure ({outer} outer steps)", outer * (per_step + matched), outer * per_step),
        ("evaluation before (cached after a first run)", evaluation, 0),
        ("evaluation after", evaluation, 0),
        *robustness,
        ("grid before (cached after a first run)", grid, 0),
        ("grid after", grid, 0),
    ]


def first_use(cfg: Config) -> list[tuple[str, int, int]]:
    """The digits models a run trains first when they are not cached (once per recipe).

    None where the package ships the recipe's weights (`digits.shipped`): they are copied in."""
    if cfg.model.source != "digits":
        return []
    from dualerase.models.digits import classifier_path, dit_folder
    from dualerase.models.shipped import ships

    recipe, clf = cfg.digits, cfg.classifier
    out = []
    folder = dit_folder(recipe)
    if not (folder / "config.json").exists() and not (recipe.shipped and ships("dit", folder)):
        n = recipe.steps * recipe.batch_size
        out.append((f"digits DiT training, once ({recipe.steps} steps; then cached)", n, n))
    path = classifier_path(clf)
    if not path.exists() and not (recipe.shipped and ships("classifier", path)):
        # its own small CNN, on the 1,437 train digits and junk
        n = clf.epochs * round(1437 * (1 + (clf.junk_share if clf.not_a_digit else 0)))
        out.append((f"digits classifier training, once ({clf.epochs} epochs; then cached)", n, n))
    return out


def cells_passes(cells: list[tuple[tuple, Config]], num_classes: int,
                 grid_classes: int) -> list[tuple[str, int, int]]:
    """The phases of several erase-class runs summed.

    Each run is given as (fid-bench's cell: (method, optimizer, class, seed, ...), its config): the
    one-time training of the digits models counted once, the base model's cached phases once per
    class and seed."""
    totals: dict[str, tuple[int, int]] = {}
    seen = set()
    for cell, cfg in cells:
        for name, fwd, bwd in passes(cfg, num_classes, grid_classes):
            once = None
            if "once" in name:
                once = name
            elif "cached" in name:
                once = (cell[2], cell[3], name)
            if once is not None and once in seen:
                continue
            seen.add(once)
            f, b = totals.get(name, (0, 0))
            totals[name] = (f + fwd, b + bwd)
    return [(name, f, b) for name, (f, b) in totals.items()]


def passes_table(rows: list[tuple[str, int, int]]) -> str:
    """The phases' passes as an aligned text table, with their total."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'phase':{width}s}  {'forward':>14s}  {'backward':>14s}"]
    lines += [f"{name:{width}s}  {fwd:>14,d}  {bwd:>14,d}" for name, fwd, bwd in rows]
    forward, backward = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'total':{width}s}  {forward:>14,d}  {backward:>14,d}")
    return "\n".join(lines)


def _per_image(fn, n: int, repeats: int = 3) -> float:
    """Seconds per image of `fn` on a batch of `n`, after a warm-up call."""
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / n


def throughput(cfg: Config) -> dict[str, float]:
    """Seconds per image measured now, on this machine with compute.threads.

    At erase.batch_size images a batch: the digits DiT's forward pass without gradients (sampling),
    its forward and backward pass of DiT's loss (training, erasure, attacks), and the digits
    classifier's forward and backward pass (its training). Random weights of the recipe's shapes:
    time does not depend on their values."""
    from dualerase.metrics.classifier import DigitsNet
    from dualerase.models.digits import NUM_CLASSES, SIZE, torch_threads
    from dualerase.models.dit import build_dit, make_scheduler
    from dualerase.models.loss import DiTLoss

    recipe, n = cfg.digits, cfg.erase.batch_size
    with torch_threads(cfg.compute.threads):
        model = build_dit(num_classes=NUM_CLASSES, sample_size=SIZE, in_channels=1,
                          patch_size=recipe.patch_size, layers=recipe.layers, heads=recipe.heads,
                          head_dim=recipe.head_dim)
        x, y = torch.randn(n, 1, SIZE, SIZE), torch.randint(0, NUM_CLASSES, (n,))
        t = torch.randint(0, 1000, (n,))
        with torch.no_grad():
            forward = _per_image(lambda: model(x, timestep=t, class_labels=y), n)
        loss, net = DiTLoss(make_scheduler()), DigitsNet()
        return {"forward": forward,
                "backward": _per_image(lambda: loss(model, (x, y)).backward(), n),
                "classifier": _per_image(lambda: net(x).logsumexp(1).mean().backward(), n)}


def estimate(cfg: Config, rows: list[tuple[str, int, int]]) -> str:
    """The dry run's time line: each phase's passes at the throughput measured now (digits only).

    A pass with a backward one counts at the forward-and-backward rate; the rest (scoring, FID
    features, Python) is not counted."""
    if cfg.model.source != "digits":
        return ("time: not estimated, no throughput has been measured for this model and device "
                "(after a run, metrics.json `timings` has each phase's seconds)")
    rate = throughput(cfg)

    def seconds(name: str, fwd: int, bwd: int) -> float:
        backward = rate["classifier" if "classifier" in name else "backward"]
        return bwd * backward + (fwd - bwd) * rate["forward"]

    total = sum(seconds(*r) for r in rows)
    cached = sum(seconds(*r) for r in rows if "cached" in r[0])
    return (f"time: about {total / 60:.1f} min on this machine ({cached / 60:.1f} min of it in "
            f"phases cached after a first run), from {rate['forward'] * 1e6:.0f} us per image "
            f"forward and {rate['backward'] * 1e6:.0f} us forward and backward of the digits DiT "
            f"measured just now at batch {cfg.erase.batch_size} with "
            f"{cfg.compute.threads or torch.get_num_threads()} threads; scoring and FID features "
            "not counted")
