"""erase-class: erase one class from a class-conditional DiT, measure the model before and after, save everything."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from configs import preset_names
from erase import DivergenceError, make_optimizers, unlearn
from erase.dualoptim import batches_per_step
from erase.saliency import mask_fraction
from erase.methods import METHODS, make_method
from eval.classifier import load_classifier, predict
from eval.fid import DIGITS_EXTRACTOR, DIGITS_FEATURE, fid
from eval.report import atomic_write_json, atomic_write_text, sample_grid, save_image, summary
from pipelines.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pipelines.config import CommandParser, Config, ConfigError, UsageError, load_config, to_dict
from pipelines.digits import (NUM_CLASSES, cache_root, fingerprint, load_digits, load_digits_dit, prepare_digits_classifier,
                              prepare_digits_dit)
from pipelines.dit import DiTLoss, drop_labels, load_dit, make_scheduler
from pipelines.sampling import class_labels, from_uint8, sample, seeded_generator, to_uint8


@dataclass
class Workload:
    """What one erasure works on: the base model, its data, and the classifier that scores it."""

    model: torch.nn.Module
    model_id: str
    images: torch.Tensor  # real images in [-1, 1]
    labels: torch.Tensor
    class_names: list[str]
    classifier: torch.nn.Module
    classifier_path: Path
    classifier_accuracy: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prepare_digits(cfg: Config, progress: bool = True) -> Workload:
    """The embedded default: the digits DiT and the digits classifier, each trained once and cached."""
    folder = prepare_digits_dit(cfg.digits, progress)
    clf_path, clf_acc = prepare_digits_classifier(cfg.classifier, progress)
    x, y = load_digits()
    return Workload(model=load_digits_dit(cfg.digits), model_id=f"digits/{folder.name}", images=x, labels=y,
                    class_names=DIGIT_NAMES, classifier=load_classifier(clf_path),
                    classifier_path=clf_path, classifier_accuracy=clf_acc)


DIGIT_NAMES = [f"digit {c}" for c in range(NUM_CLASSES)]


def resolve_class(text: str, class_names: list[str]) -> int:
    """The class index named by `text` (an index, or a class name as in `class_names`)."""
    n = len(class_names)
    if text.strip().lstrip("-").isdigit():
        c = int(text)
        if 0 <= c < n:
            return c
        raise UsageError(f"class {c} is out of range: this model has classes 0..{n - 1}")
    lowered = [name.lower() for name in class_names]
    if text.strip().lower() in lowered:
        return lowered.index(text.strip().lower())
    raise UsageError(f"unknown class {text!r}: give a class index 0..{n - 1}")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, label_dropout: float = 0.0,
            null_class: int = -1, start: int = 0):
    """Endless random batches (drawn with replacement) from (x, y), labels dropped to `null_class` at that rate.

    Batch i depends only on (seed, i), so a resumed run continues with exactly the batches it would have seen."""
    for i in itertools.count(start):
        gen = seeded_generator(seed, i)
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        yield x[idx], drop_labels(y[idx], label_dropout, null_class, gen)


def protocol(cfg: Config, w: Workload, forget_class: int) -> dict:
    """Everything needed to reproduce or compare the numbers."""
    reference = int((w.labels != forget_class).sum())
    return {
        "sampler": "DDPM (diffusers DDPMScheduler, learned variance)",
        "steps": cfg.sample.steps,
        "guidance": cfg.sample.guidance,
        "forget_samples": cfg.eval.forget_samples,
        "retain_samples": cfg.eval.retain_samples_per_class * (w.num_classes - 1),
        "retain_labels": f"{cfg.eval.retain_samples_per_class} per retained class",
        "reference": f"all {reference} real images of the {w.num_classes - 1} retained classes",
        "feature_extractor": f"{DIGITS_EXTRACTOR}-{DIGITS_FEATURE} (digits classifier penultimate layer, torch-fidelity)",
        "classifier": f"digits CNN, {w.classifier_accuracy:.3f} accuracy on the held-out split",
        "seed": cfg.seed,
    }


def evaluate(model, w: Workload, cfg: Config, forget_class: int, progress: bool = True, desc: str = "",
             cache_dir: Path | None = None) -> dict:
    """Forget accuracy, retain accuracy (per class too) and FID of the retained classes' samples.

    Samples are scored at 8-bit precision; with `cache_dir` finished sample batches survive a kill."""
    scheduler = make_scheduler()
    fl = class_labels(w.num_classes, cfg.eval.forget_samples, only=forget_class)
    rl = class_labels(w.num_classes, cfg.eval.retain_samples_per_class, exclude=forget_class)
    labels = torch.cat([fl, rl])
    images = sample(model, scheduler, labels, num_steps=cfg.sample.steps, guidance=cfg.sample.guidance,
                    seed=cfg.seed, batch_size=cfg.sample.batch_size, progress=progress, desc=f"sample {desc}",
                    cache_dir=cache_dir)
    images = from_uint8(to_uint8(images))
    pred = predict(w.classifier, images)
    per_class = {str(c): (pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()}
    retain = images[len(fl):]
    reference = w.images[w.labels != forget_class]
    return {
        "forget_accuracy": (pred[:len(fl)] == forget_class).float().mean().item(),
        "retain_accuracy": (pred[len(fl):] == rl).float().mean().item(),
        "fid": fid(to_uint8(retain), to_uint8(reference), feature_extractor=DIGITS_EXTRACTOR,
                   weights_path=str(w.classifier_path)),
        "per_class_accuracy": per_class,
    }


def evaluate_base(w: Workload, cfg: Config, forget_class: int, progress: bool = True) -> dict:
    """The base model's scores, cached by model, protocol, seed and class: they do not change between erasures."""
    key = fingerprint({"model": w.model_id, "protocol": protocol(cfg, w, forget_class), "class": forget_class,
                       "sample": dataclasses.asdict(cfg.sample), "eval": dataclasses.asdict(cfg.eval),
                       "classifier": w.classifier_path.name, "scored_at": "uint8"})
    path = cache_root() / "evals" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    samples = path.with_suffix("")
    scores = evaluate(w.model, w, cfg, forget_class, progress, desc="before", cache_dir=samples)
    atomic_write_json(path, scores)
    shutil.rmtree(samples, ignore_errors=True)
    return scores


def grid_images(model, w: Workload, cfg: Config, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`grid_per_class` samples of every class, with the same noise for every model (so rows compare)."""
    labels = class_labels(w.num_classes, cfg.eval.grid_per_class)
    images = sample(model, make_scheduler(), labels, num_steps=cfg.sample.steps, guidance=cfg.sample.guidance,
                    seed=cfg.seed, batch_size=cfg.sample.batch_size, progress=progress, desc="sample grid")
    return to_uint8(images), labels


def method_data(method, w: Workload, cfg: Config, forget_class: int, progress: bool = True):
    """(forget images, forget labels, retain images, retain labels) as the method is fed (see `Method`)."""
    is_forget = w.labels == forget_class
    xf, yf = w.images[is_forget], w.labels[is_forget]
    xr, yr = w.images[~is_forget], w.labels[~is_forget]
    if method.forget_data == "surrogate":  # SA: uniform-noise images in [-1, 1], as many as real forget images
        xf = torch.rand(xf.shape, generator=torch.Generator().manual_seed(cfg.seed + 5)) * 2 - 1
    if method.retain_data == "replay":  # SA: what the original model generates for the other classes
        yr = class_labels(w.num_classes, cfg.method.replay_per_class, exclude=forget_class)
        xr = sample(w.model, make_scheduler(), yr, num_steps=cfg.sample.steps, guidance=cfg.sample.guidance,
                    seed=cfg.seed + 6, batch_size=cfg.sample.batch_size, progress=progress, desc="replay")
    return xf, yf, xr, yr


def erase(w: Workload, cfg: Config, forget_class: int, output: Path, *, resume: bool = False,
          progress: bool = True):
    """The method's preparation (mask, Fisher, replay) then Algorithm 1 on a copy of the base model.

    Writes output/prepared.safetensors (mask and method state, reused on resume), output/log.jsonl and
    checkpoint-<step> folders every `erase.checkpoint_every` outer steps. Returns (model, log, timings, kept)."""
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(w.model)
    method = make_method(cfg.method, DiTLoss(make_scheduler()), forget_class=forget_class, num_classes=w.num_classes)
    t0 = time.perf_counter()
    xf, yf, xr, yr = method_data(method, w, cfg, forget_class, progress)
    prepared = output / "prepared.safetensors"
    if resume and prepared.exists():
        tensors = load_file(str(prepared))
        mask = {k[5:]: v for k, v in tensors.items() if k.startswith("mask.")} or None
        method.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("state.")}, w.model)
    else:
        mask = method.prepare(model, batches(xf, yf, 1, cfg.seed + 1), batches(xr, yr, 1, cfg.seed + 2), progress)
        tensors = {f"mask.{k}": v.to(torch.uint8) for k, v in (mask or {}).items()}
        tensors.update({f"state.{k}": v.contiguous() for k, v in method.state().items()})
        save_file(tensors, str(output / ".prepared.tmp"))
        os.replace(output / ".prepared.tmp", prepared)
    if mask is not None:
        mask = {k: v.bool() for k, v in mask.items()}
    t1 = time.perf_counter()
    e = cfg.erase
    optimizers = make_optimizers([p for p in model.parameters() if p.requires_grad], e)
    start = 0
    checkpoint = latest_checkpoint(output) if resume else None
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizers)
    else:
        torch.manual_seed(cfg.seed + 7)
    log_path = output / "log.jsonl"
    done = log_path.read_text().splitlines()[:start] if start else []
    atomic_write_text(log_path, "".join(line + "\n" for line in done))
    per_f, per_r = batches_per_step(method, e)
    forget_data = batches(xf, yf, e.batch_size, cfg.seed + 3, e.forget_label_dropout, w.num_classes,
                          start=start * per_f)
    retain_data = batches(xr, yr, e.batch_size, cfg.seed + 4, e.retain_label_dropout, w.num_classes,
                          start=start * per_r)
    with open(log_path, "a") as log_file:
        def on_step(record):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            finished = record["step"] + 1
            if e.checkpoint_every and finished % e.checkpoint_every == 0 and finished < e.outer_steps:
                save_checkpoint(output, finished, model, optimizers)

        unlearn(model, method, forget_data, retain_data, e, mask=mask, optimizers=optimizers, on_step=on_step,
                start_step=start, progress=progress)
    t2 = time.perf_counter()
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    steps = e.outer_steps - start
    timings = {"prepare_method_s": t1 - t0, "erase_s": t2 - t1, "erase_steps_per_s": steps / max(t2 - t1, 1e-9)}
    return model.eval(), log, timings, None if mask is None else mask_fraction(mask)


def save_model(model, folder: Path) -> None:
    """save_pretrained into a temporary folder, then swap it in: never a half-written model folder."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def check_pseudo_class(cfg: Config, forget_class: int, num_classes: int) -> None:
    pseudo = cfg.method.pseudo_class
    if pseudo is not None and not (0 <= pseudo < num_classes and pseudo != forget_class):
        raise UsageError(f"method.pseudo_class {pseudo} must be a class other than {forget_class} in 0..{num_classes - 1}")


def check_output(output: Path, cfg: Config, overwrite: bool, resume: bool) -> bool:
    """Decide what to do with an existing output folder; returns True when a finished run is there to report."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file: give a folder")
    if not output.exists() or not any(output.iterdir()):
        return False
    if not (output / "config.yaml").exists():
        raise UsageError(f"{output} is not empty and holds no run: choose an empty or new --output folder")
    if overwrite:
        return False
    saved = output / "config.yaml"
    if resume:
        if saved.exists() and yaml.safe_load(saved.read_text()) != to_dict(cfg):
            raise UsageError(f"{output} holds a run with another config: resume with the same options, or pass "
                             "--overwrite to start over")
        return (output / "metrics.json").exists()
    if (output / "metrics.json").exists():
        raise UsageError(f"{output} already holds a finished run: pass --overwrite to replace it, or choose another "
                         "--output")
    raise UsageError(f"{output} holds an unfinished run: pass --resume to continue it, or --overwrite to start over")


def run(cfg: Config, class_arg: str, output: Path, *, overwrite: bool = False, resume: bool = False,
        progress: bool = True) -> dict:
    """The whole job: prepare, measure the base model, erase, measure again, write the outputs.

    Killed at any point, the same call with `resume` continues: the prepared mask, the latest erasure checkpoint and
    every finished batch of samples are reused. A diverged erasure writes no "after" metrics."""
    forget_class = resolve_class(class_arg, DIGIT_NAMES)
    check_pseudo_class(cfg, forget_class, len(DIGIT_NAMES))
    if check_output(output, cfg, overwrite, resume):
        return json.loads((output / "metrics.json").read_text())
    t_start = time.perf_counter()
    w = prepare_digits(cfg, progress)
    t_prepared = time.perf_counter()
    before = evaluate_base(w, cfg, forget_class, progress)
    t_before = time.perf_counter()
    if overwrite and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if resume and (output / "model" / "config.json").exists():  # erasure had finished before the kill
        model = load_dit(str(output / "model"))
        log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
        kept = json.loads((output / "erase.json").read_text())["mask_kept_fraction"]
        erase_timings = json.loads((output / "erase.json").read_text())["timings"]
    else:
        try:
            model, log, erase_timings, kept = erase(w, cfg, forget_class, output, resume=resume, progress=progress)
        except DivergenceError as err:
            last = latest_checkpoint(output)
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was reached"
            side = "forget" if str(err).startswith(("forget", "joint")) else "retain"
            raise DivergenceError(f"erasure diverged at the {err}; {keep}; lower erase.{side}_lr (or erase.shared_lr)"
                                  f" or clip harder with a smaller erase.{side}_clip, then run again") from None
        atomic_write_json(output / "erase.json", {"timings": erase_timings, "mask_kept_fraction": kept})
        save_model(model, output / "model")
    t_erased = time.perf_counter()
    after = evaluate(model, w, cfg, forget_class, progress, desc="after", cache_dir=output / "samples-after")
    t_after = time.perf_counter()
    before_grid, grid_labels = grid_images(w.model, w, cfg, progress)
    after_grid, _ = grid_images(model, w, cfg, progress)
    save_image(sample_grid({"before": before_grid, "after": after_grid}, grid_labels, w.class_names,
                           marked=forget_class), output / "grid.png")
    metrics = {
        "forget_class": forget_class,
        "class_name": w.class_names[forget_class],
        "method": cfg.method.name,
        "optimizer": cfg.erase.optimizer,
        "seed": cfg.seed,
        "outer_steps": cfg.erase.outer_steps,
        "model": w.model_id,
        "before": before,
        "after": after,
        "protocol": protocol(cfg, w, forget_class),
        "timings": {"prepare_s": t_prepared - t_start, "before_eval_s": t_before - t_prepared, **erase_timings,
                    "after_eval_s": t_after - t_erased, "total_s": time.perf_counter() - t_start},
        "mask_kept_fraction": kept,
        "final_log": log[-1] if log else None,
    }
    for stale in output.glob("checkpoint-*"):  # the finished model supersedes them
        shutil.rmtree(stale, ignore_errors=True)
    atomic_write_json(output / "metrics.json", metrics)
    return metrics


SCORES = ("forget_accuracy", "retain_accuracy", "fid")


def aggregate_trials(runs: list[dict]) -> dict:
    """One metrics record from several seeds: the single-run keys hold means, `std` the sample std, `trials` each run."""
    first = runs[0]
    metrics = {k: first[k] for k in ("forget_class", "class_name", "method", "optimizer", "seed", "outer_steps",
                                      "model")}
    metrics["seeds"] = [r["seed"] for r in runs]
    metrics["std"] = {}
    for side in ("before", "after"):
        metrics[side], metrics["std"][side] = {}, {}
        for key in SCORES:
            values = [r[side][key] for r in runs]
            metrics[side][key] = statistics.fmean(values)
            metrics["std"][side][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    metrics["protocol"] = {**first["protocol"], "seed": metrics["seeds"]}
    metrics["timings"] = {k: sum(r["timings"][k] for r in runs) for k in first["timings"]}
    metrics["timings"]["erase_steps_per_s"] = statistics.fmean(r["timings"]["erase_steps_per_s"] for r in runs)
    metrics["trials"] = runs
    return metrics


def run_trials(cfg: Config, class_arg: str, output: Path, trials: int = 1, *, overwrite: bool = False,
               resume: bool = False, progress: bool = True) -> dict:
    """K runs with seeds seed, seed+1, ..., each in `output/trial-s<seed>`; `output/metrics.json` aggregates them."""
    if trials == 1:
        return run(cfg, class_arg, output, overwrite=overwrite, resume=resume, progress=progress)
    resolve_class(class_arg, DIGIT_NAMES)
    if check_output(output, cfg, overwrite, resume):
        return json.loads((output / "metrics.json").read_text())
    if overwrite and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    runs = [run(dataclasses.replace(cfg, seed=seed), class_arg, output / f"trial-s{seed}", resume=True,
                progress=progress) for seed in range(cfg.seed, cfg.seed + trials)]
    metrics = aggregate_trials(runs)
    atomic_write_json(output / "metrics.json", metrics)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="erase-class",
        description="Erase one class from a class-conditional diffusion transformer (DualOptim), and measure it.",
        epilog=(f"presets: {', '.join(preset_names())}.  Main keys for --set: erase.outer_steps, erase.forget_lr, "
                "erase.retain_lr, erase.shared_lr, erase.alpha, erase.alpha_schedule, erase.batch_size, "
                "erase.forget_clip, method.gamma, method.grad_samples, sample.steps, sample.guidance, "
                "eval.forget_samples, eval.retain_samples_per_class.  See README.md for every key."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("forget_class", help="the class to erase (for the digits default: 0..9)")
    parser.add_argument("--config", default="digits", help="a preset name or a YAML path (default: digits)")
    parser.add_argument("--method", choices=sorted(METHODS), help="base method (config method.name)")
    parser.add_argument("--optimizer", choices=("dual", "shared"), help="dual or shared optimizers (erase.optimizer)")
    parser.add_argument("--seed", type=int, help="seed of erasure and evaluation (config seed)")
    parser.add_argument("--trials", type=int, default=1, help="run K seeds from --seed on; report mean and std")
    parser.add_argument("--output", type=Path, help="output folder (default: runs/<class>-<method>-<optimizer>-s<seed>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set erase.outer_steps=200 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace whatever run is in --output")
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished run in --output from its latest checkpoint and samples")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        overrides = list(args.overrides)
        if args.method:
            overrides.append(f"method.name={args.method}")
        if args.optimizer:
            overrides.append(f"erase.optimizer={args.optimizer}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = load_config(args.config, overrides)
        output = args.output or Path("runs") / (
            f"{args.forget_class.replace(' ', '_')}-{cfg.method.name}-{cfg.erase.optimizer}-s{cfg.seed}")
        if args.trials < 1:
            raise UsageError(f"--trials must be >= 1, got {args.trials}")
        if args.overwrite and args.resume:
            raise UsageError("--overwrite and --resume contradict each other: pass one")
        metrics = run_trials(cfg, args.forget_class, output, args.trials, overwrite=args.overwrite,
                             resume=args.resume, progress=not args.quiet)
    except (ConfigError, UsageError) as e:
        print(f"erase-class: error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"erase-class: error: {e}", file=sys.stderr)
        return 1
    print(summary(metrics))
    where = "trial-s*/: " if args.trials > 1 else ""
    print(f"wrote {output}/: metrics.json, {where}model/, grid.png, config.yaml, log.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
