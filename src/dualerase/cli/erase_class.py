"""erase-class: erase a class from a class-conditional DiT, measure before and after, save all."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualerase.cli import METHOD_NAMES, CommandParser, fail, parse, stopped
from dualerase.errors import ConfigError, UsageError
from dualerase.integrations.tracking import TRACKERS
from dualerase.storage import preset_names


def build_parser() -> argparse.ArgumentParser:
    """erase-class's arguments."""
    parser = CommandParser(
        prog="erase-class",
        description="Erase one class from a class-conditional diffusion transformer (DualOptim), "
                    "and measure it.",
        epilog=(f"presets: {', '.join(preset_names())}.  Main keys for --set: erase.outer_steps, "
                "erase.forget_lr, erase.retain_lr, erase.alpha, erase.batch_size, method.gamma, "
                "method.grad_samples, sample.steps, sample.guidance, eval.forget_samples, "
                "compute.threads.  docs/configuration.md lists every key."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("forget_class", nargs="?", help="the class to erase: an index (207), an "
                        "ImageNet synset (n02099601) or a name ('golden retriever'); digits: 0..9; "
                        "with --config <finished run>/config.yaml, that run's class")
    parser.add_argument("--config", help="a preset name or a YAML path (default: digits; imagenet "
                        "with --model)")
    parser.add_argument("--model", help="a DiT in diffusers layout: hub id (facebook/DiT-XL-2-256) "
                        "or local folder (config model.path; sets model.source=diffusers)")
    parser.add_argument("--data", help="ImageNet-style train folder of the model's classes (config "
                        "data.path)")
    parser.add_argument("--method", choices=METHOD_NAMES, help="base method (config method.name)")
    parser.add_argument("--optimizer", choices=("dual", "shared"),
                        help="dual or shared optimizers (erase.optimizer)")
    parser.add_argument("--seed", type=int, help="seed of erasure and evaluation (config seed)")
    parser.add_argument("--trials", type=int, default=1,
                        help="run K seeds from --seed on; report mean and std")
    parser.add_argument("--output", type=Path,
                        help="output folder (default: runs/<class>-<method>-<optimizer>-s<N>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set erase.outer_steps=200 "
                             "(repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace whatever run is in --output")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="latest|CHECKPOINT",
                        help="continue the unfinished run in --output from its latest (or the "
                             "given) checkpoint-<step> and the samples on disk")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report-to", nargs="+", choices=TRACKERS, default=[], metavar="TRACKER",
                        help="log both losses, gradient norms and alpha every outer step, and the "
                             "scores at the end, to tensorboard (under OUTPUT/logs/) and/or wandb")
    parser.add_argument("--push-to-hub", metavar="REPO", help="after the run, upload model/ (with "
                        "its model card) to this Hugging Face Hub repository")
    parser.add_argument("--score-only", action="store_true", help="measure the model (--model, or "
                        "the config's base model) under the same protocol without erasing: print "
                        "its scores, write nothing but the cache")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config "
                        "(every key, defaults included) as YAML, and stop")
    parser.add_argument("--dry-run", action="store_true", help="check the class, config, output "
                        "folder, trackers and Hub login, print the network passes of each phase, "
                        "and stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run erase-class with `argv` (default: the command line's); returns the exit code."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):  # --help, --version or a bad argument: answered before torch loads
        return args
    from dualerase.config.load import command_config, forget_class_of
    from dualerase.integrations.card import check_hub, push_to_hub
    from dualerase.launch import processes
    from dualerase.metrics.imagenet import EvalError
    from dualerase.reports.summary import scores_text, summary
    from dualerase.runs.checkpoint import check_options, default_output
    from dualerase.runs.job import dry_run, run_trials, score, written
    from dualerase.runs.plan import config_text

    output = None
    try:
        args.forget_class = forget_class_of(args.forget_class, args.config)
        chosen = {"method.name": args.method, "erase.optimizer": args.optimizer, "seed": args.seed}
        cfg = command_config(args.config, args.model, args.data, args.overrides
                             + [f"{k}={v}" for k, v in chosen.items() if v is not None])
        output = args.output or default_output(args.forget_class, cfg)
        check_options(args.trials, args.overwrite, args.resume, args.push_to_hub)
        if args.print_config:
            print(config_text(cfg), end="")
            return 0
        if args.push_to_hub:  # the login and the network, before any work
            check_hub(args.push_to_hub)
        if args.score_only:
            print(scores_text(score(cfg, args.forget_class, progress=not args.quiet)))
            return 0
        if args.dry_run:
            print(dry_run(cfg, args.forget_class, output, args.trials, args.overwrite, args.resume,
                          args.report_to))
            return 0
        metrics = run_trials(cfg, args.forget_class, output, args.trials, overwrite=args.overwrite,
                             resume=args.resume, progress=not args.quiet, report_to=args.report_to)
        if processes().is_main_process:
            print(summary(metrics))
            print(f"wrote {output}/: {written(output)}")
            if args.push_to_hub:
                print(f"pushed {output / 'model'} to "
                      f"{push_to_hub(output / 'model', args.push_to_hub)}")
    except (ConfigError, UsageError, EvalError) as e:
        return fail("erase-class", e)
    except (Exception, KeyboardInterrupt) as e:  # diverged, disk full, Ctrl-C; else raised again
        return stopped("erase-class", e, output, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
