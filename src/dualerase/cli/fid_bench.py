"""fid-bench: the method x optimizer x class x seed table

(forget accuracy, retain accuracy, FID, spread over seeds)."""
from __future__ import annotations

import sys
from pathlib import Path

from dualerase.cli import CommandParser, fail, parse
from dualerase.errors import ConfigError, UsageError
from dualerase.launch import is_main_process
from dualerase.storage import preset_names


def main(argv: list[str] | None = None) -> int:
    """Run fid-bench with `argv` (default: the command line's); returns the exit code."""
    parser = CommandParser(prog="fid-bench", description=__doc__)
    parser.add_argument("spec", nargs="?", default="digits", help="benchmark spec: a shipped "
                        f"spec's name ({', '.join(preset_names('bench'))}) or a YAML path "
                        "(default: digits)")
    parser.add_argument("--classes", nargs="+", help="forget classes (overrides the spec)")
    parser.add_argument("--methods", nargs="+", help="base methods (overrides the spec)")
    parser.add_argument("--optimizers", nargs="+", choices=("dual", "shared"),
                        help="(overrides the spec)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (overrides the spec)")
    parser.add_argument("--output", type=Path, default=Path("bench"),
                        help="folder of the cells and tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every cell (after the spec's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config of every cell's settings as YAML (the "
                             "first cell's, with the method, optimizer and seed of each cell "
                             "listed), and stop")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the spec and every cell's config, print the cells to run and "
                             "their network passes, and stop")
    parser.add_argument("--shard", metavar="i/N",
                        help="run only cells i, i + N, i + 2N, ... of the grid (e.g. a job array's "
                             "index); claims keep jobs apart in any case")
    parser.add_argument("--claim-timeout", type=float, default=6.0, metavar="HOURS",
                        help="a cell claimed by a job on another machine is taken over when "
                             "nothing in its folder changed for this long (default 6)")
    parser.add_argument("--aggregate", action="store_true",
                        help="run nothing: write the tables from the cells finished so far")
    parser.add_argument("--records", type=Path, metavar="DIR",
                        help="a folder of benchmark records (cells.jsonl, logs.tar.xz): its cells, "
                             "where it has any, are written into --output first (finished there); "
                             "once the tables are written, the records are written anew from "
                             "--output's cells")
    args = parse(parser, argv)
    if isinstance(args, int):  # --help, --version or a bad argument: answered before torch loads
        return args
    from dualerase.bench.bench import BENCH_FILES, dry_run, run_spec
    from dualerase.bench.cells import plan
    from dualerase.bench.records import CELLS, LOGS, pack, unpack
    from dualerase.data.folders import check_writable
    from dualerase.integrations.claims import shard_of
    from dualerase.launch import processes
    from dualerase.metrics.imagenet import EvalError
    from dualerase.runs.job import written
    from dualerase.runs.plan import config_text

    try:
        grid = plan(args.spec, classes=args.classes, methods=args.methods,
                    optimizers=args.optimizers, seeds=args.seeds, overrides=args.overrides)
        spec, configs = grid.spec, grid.configs
        if args.print_config:
            print(f"# {len(grid.cells)} cells: every (method, optimizer, class, seed) of methods "
                  f"{spec.methods}, optimizers {spec.optimizers}, classes {spec.classes}, seeds "
                  f"{spec.seeds}; the config of the first:")
            print(config_text(configs[0]), end="")
            return 0
        if args.dry_run:  # every check a real run makes before its first cell
            print(dry_run(grid, args.output))
            return 0
        if args.records is not None and (args.records / CELLS).exists() and is_main_process():
            check_writable(args.output, "--output")
            unpack(args.records, args.output)
        command = "fid-bench " + " ".join(argv if argv is not None else sys.argv[1:])
        result = run_spec(grid, args.output, progress=not args.quiet,
                          claim_timeout=args.claim_timeout,
                          shard=shard_of(args.shard) if args.shard else (0, 1),
                          aggregate_only=args.aggregate, command=command)
        if args.records is not None and not result.pending and is_main_process():
            count = pack(args.output, args.records, spec.config)
    except (ConfigError, UsageError, EvalError) as e:
        return fail("fid-bench", e)
    # other jobs (or shards) run these: the last job to finish writes
    if result.pending and not args.aggregate:
        if is_main_process():
            print(f"fid-bench: {len(result.pending)} cell(s) of {result.output} are left to other "
                  "jobs (--shard, or claimed in their folders); the job that finishes last writes "
                  "the tables, or run this command with --aggregate", file=sys.stderr)
        return 0
    if not result.cells:  # with --aggregate: nothing finished yet; else every cell ran and broke
        if result.diverged or result.failed:
            return fail("fid-bench", "no cell finished; diverged or failed: "
                        f"{'; '.join(result.diverged + result.failed)}", 1)
        return fail("fid-bench", f"no cell of this benchmark has finished in {args.output} yet: "
                    "run it without --aggregate first", 1)
    # under a multi-process launch the main process writes the tables
    if not processes().is_main_process:
        return 0
    print(result.table)
    print(f"wrote {args.output}/: {written(args.output, BENCH_FILES)}")
    if args.records is not None and not result.pending:
        logs = ", their logs in logs.tar.xz" if (args.records / LOGS).exists() else ""
        print(f"wrote {args.records}/: {count} cells in {CELLS}{logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
