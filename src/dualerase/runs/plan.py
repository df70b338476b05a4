"""What a run will do, before it does it: the resolved config (--print-config) and the network passes of each phase
(--dry-run)."""
from __future__ import annotations

import math

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


def passes_table(rows: list[tuple[str, int, int]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'phase':{width}s}  {'forward':>14s}  {'backward':>14s}"]
    lines += [f"{name:{width}s}  {fwd:>14,d}  {bwd:>14,d}" for name, fwd, bwd in rows]
    lines.append(f"{'total':{width}s}  {sum(r[1] for r in rows):>14,d}  {sum(r[2] for r in rows):>14,d}")
    return "\n".join(lines)
