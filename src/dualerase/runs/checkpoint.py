"""Resuming: the output folder (its default, the options that must agree, what an existing one
allows), erasure checkpoints (`checkpoint-<step>/` holds the weights, both optimizers, the RNG state
and the base model it was erased from, written atomically), the checks that a resume reads no
damaged file and has that base model, a full disk's message, and a preparation's running sums."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dualerase.config import Config, differing, saved_config, to_dict
from dualerase.errors import UsageError
from dualerase.integrations.claims import LOCK
from dualerase.launch import processes
from dualerase.storage import atomic_path, damage, full_disk, replace_folder, whole_lines, writing

PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output: Path, intact: bool = True) -> list[Path]:
    """Finished checkpoints in `output`, oldest first: those whose files look whole (`damaged`), or
    every finished one with intact=False."""
    found = [p for p in output.glob("checkpoint-*") if PATTERN.match(p.name)
             and (p / "done").exists() and not (intact and damaged(p))]
    return sorted(found, key=step_of)


def step_of(checkpoint: Path) -> int:
    """The outer steps a checkpoint folder holds, from its name (0 for another name)."""
    match = PATTERN.match(checkpoint.name)
    return int(match.group(1)) if match else 0


def damaged(checkpoint: Path) -> str | None:
    """"<file> is damaged (why)" for a file of `checkpoint` that cannot be read, else None."""
    return damage(checkpoint / "model.safetensors", checkpoint / "state.pt",
                  *checkpoint.glob("ema.safetensors"), *checkpoint.glob("base.json"))


def latest_checkpoint(output: Path) -> Path | None:
    """The newest intact finished checkpoint in `output`; None when there is none."""
    found = checkpoints(output)
    return found[-1] if found else None


def save_checkpoint(output: Path, step: int, model: torch.nn.Module, optimizers,
                    base: str | None = None, keep: int = 2,
                    ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint-<step> via a temporary folder, then drop all but the newest `keep`.

    Args:
        output: the run folder.
        step: the outer steps finished.
        model: the model being erased.
        optimizers: (Optim_f, Optim_r); the same object twice in shared mode.
        base: the id of the model erasure started from (path and content digest), which a resume
            must run on again.
        keep: how many checkpoints stay.
        ema: the moving average of the weights (erase.ema_decay), or None.

    Returns:
        The checkpoint folder."""
    final = output / f"checkpoint-{step}"
    tmp = output / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(final, tmp):  # a failed write leaves no temporary folder
        tmp.mkdir(parents=True)
        save_file(unshared(model.state_dict()), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file({n: t.contiguous() for n, t in ema.items()}, str(tmp / "ema.safetensors"))
        forget, retain = optimizers
        torch.save({"forget": forget.state_dict(),
                    "retain": None if retain is forget else retain.state_dict(),
                    "step": step, "rng": torch.get_rng_state(), "cuda_rng":
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "state.pt")
        if base is not None:
            (tmp / "base.json").write_text(json.dumps({"model": base}))
        (tmp / "done").write_text(str(step))
        replace_folder(tmp, final)
    for old in checkpoints(output, intact=False)[:-keep]:  # by step; no file read
        shutil.rmtree(old, ignore_errors=True)
    return final


def disk_full(error: BaseException, output: Path | None = None) -> str | None:
    """For a write that failed on a full disk (`storage.full_disk`, the disk of `output` looked at
    too) or quota, one line: a file on the full disk, the space to free, where a resume continues.
    None for any other error."""
    full = full_disk(error, output)
    if full is None:
        return None
    latest = latest_checkpoint(output) if output is not None and output.is_dir() else None
    where = f"from {latest}" if latest else ("(no checkpoint yet: from the start, with the cached "
                                             "work kept)")
    return (f"{os.strerror(full[0])} writing {full[1]}: free space on that disk, then continue "
            f"with --resume latest {where}")


def checkpoint_base(path: Path) -> str | None:
    """The id of the base model a checkpoint was erased from; None for one older than the record."""
    record = path / "base.json"
    return json.loads(record.read_text())["model"] if record.exists() else None


def default_output(class_arg: str, cfg: Config) -> Path:
    """Where a run goes without --output: runs/<class>-<method>-<optimizer>-s<seed>."""
    name = class_arg.replace(" ", "_")
    return Path("runs") / f"{name}-{cfg.method.name}-{cfg.erase.optimizer}-s{cfg.seed}"


def check_options(trials: int, overwrite: bool, resume: str | None,
                  push_to_hub: str | None) -> None:
    """Refuse options that contradict each other, before any work.

    Raises:
        UsageError: fewer than one trial, --overwrite with --resume, or several trials to push.
    """
    if trials < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: pass one")
    if push_to_hub and trials > 1:
        raise UsageError("--push-to-hub uploads one model: run with --trials 1")


def check_output(output: Path, cfg: Config, overwrite: bool, resume: str | None) -> bool:
    """Decide what to do with an existing output folder.

    Returns:
        True when a finished run is there to report; False when the run goes ahead.

    Raises:
        UsageError: the folder holds something the options do not let this run use."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file: give a folder")
    # new, or only our own lock
    if not output.exists() or not any(p.name != LOCK for p in output.iterdir()):
        return False
    if not (output / "config.yaml").exists():
        raise UsageError(f"{output} is not empty and holds no run: choose an empty or new --output "
                         "folder")
    if overwrite:
        return False
    saved = output / "config.yaml"
    if resume:
        if bad := damage(saved):
            raise UsageError(f"{bad}, so the run's options are unknown: pass --overwrite to start "
                             "over (or, with the run's own options, rewrite it with --print-config "
                             f"> {saved})")
        before, now = saved_config(saved), to_dict(cfg)
        if before != now:
            keys = "a key this version no longer has"
            if before:
                keys = ", ".join(f"{k} {a} -> {b}" for k, a, b in differing(before, now)[:3])
            raise UsageError(f"{output} holds a run with another config ({keys}): resume with the "
                             f"same options (its own: --config {saved}), or pass --overwrite to "
                             "start over")
        if resume != "latest" and not (Path(resume) / "done").exists():
            raise UsageError(f"--resume {resume} is not a finished checkpoint folder: pass "
                             "--resume latest")
        metrics = output / "metrics.json"
        if metrics.exists() and (bad := damage(metrics)):
            raise UsageError(f"{bad}: delete it, then run again with --resume latest to measure "
                             "the erased model again")
        return metrics.exists()
    if (output / "metrics.json").exists():
        raise UsageError(f"{output} already holds a finished run: pass --overwrite to replace it, "
                         "or choose another --output")
    raise UsageError(f"{output} holds an unfinished run: pass --resume latest to continue it, or "
                     "--overwrite to start over")


def resume_checkpoint(output: Path, resume: str) -> Path | None:
    """The checkpoint `resume` ("latest" or a folder) continues from, None for none: "latest" passes
    over damaged ones to the newest intact one, saying so on stderr. UsageError: the folder given
    is damaged, or no checkpoint is intact."""
    if resume != "latest":
        if bad := damaged(Path(resume)):
            raise UsageError(f"--resume {resume}: {bad}: pass --resume latest (the newest intact "
                             "checkpoint), or --overwrite to start over")
        return Path(resume)
    latest = latest_checkpoint(output)
    skipped = [p for p in checkpoints(output, intact=False)
               if latest is None or step_of(p) > step_of(latest)]
    if skipped and latest is None:
        raise UsageError(f"{damaged(skipped[-1])}, and no older checkpoint is intact: delete "
                         f"{', '.join(map(str, skipped))} to erase from the start (the preparation "
                         "is kept), or pass --overwrite to start over")
    if skipped and processes().is_main_process:
        print(f"warning: --resume latest: {damaged(skipped[-1])}: resuming from {latest} instead",
              file=sys.stderr)
    return latest


def check_resume(output: Path, resume: str, model_id: str) -> None:
    """Refuse (UsageError, one line naming the file and the fix) a resume that would read a damaged
    file, or whose base model's files changed since (its id `model_id` holds their digest; runs
    older than that record are not checked). Once erasure finished it reads erase.json, model/ and
    all of log.jsonl; before, the checkpoint it continues from (`resume_checkpoint`) and the log's
    records up to that step (a line cut short after them is dropped with the steps undone)."""
    erased, log, model = output / "erase.json", output / "log.jsonl", output / "model"
    if erased.exists():
        fix = f"delete {erased} to erase again (from the latest checkpoint) with --resume latest"
        files = [*model.rglob("*.safetensors"), *model.rglob("*.json")] or [model / "config.json"]
        if bad := damage(erased, *files, log):
            raise UsageError(f"{bad}: {fix}")
        if len(whole_lines(log)) < len(log.read_text().splitlines()):
            raise UsageError(f"{log} is damaged (a line cut short or garbage): {fix}")
        recorded = json.loads(erased.read_text()).get("model")
    else:
        checkpoint, whole = resume_checkpoint(output, resume), len(whole_lines(log))
        if checkpoint is not None and whole < step_of(checkpoint):
            older = [p for p in checkpoints(output) if step_of(p) <= whole]
            raise UsageError(f"{log} holds {whole} whole records (then a line cut short or "
                             f"garbage) but {checkpoint} is at step {step_of(checkpoint)}: pass "
                             + (f"--resume {older[-1]}" if older else "--overwrite to start over"))
        recorded = checkpoint_base(checkpoint) if checkpoint is not None else None
    if recorded is not None and recorded != model_id:
        raise UsageError(f"--resume: {output} was erased from model {recorded}, but that model's "
                         f"files now give {model_id} (changed in place): resume with the model it "
                         "started from, or pass --overwrite to start over")


def unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict that safetensors accepts: repeats of one storage cloned.

    A tied embedder is listed under every block's name with one storage, which `save_file`
    refuses. (Loading it into a tied model writes equal values into one tensor.)"""
    seen, out = set(), {}
    for name, value in state.items():
        value = value.contiguous()
        out[name] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    return out


def load_checkpoint(path: Path, model: torch.nn.Module, optimizers,
                    ema: dict[str, torch.Tensor] | None = None) -> int:
    """Restore weights, optimizer states, RNG and the moving average (into `ema`) from `path`.

    Returns:
        The number of outer steps finished."""
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if ema is not None:
        for n, t in load_file(str(path / "ema.safetensors")).items():
            ema[n].copy_(t)
    # the optimizer states follow their parameters onto their device
    state = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    forget, retain = optimizers
    forget.load_state_dict(state["forget"])
    if retain is not forget:
        retain.load_state_dict(state["retain"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


class PartialSums:
    """Running sums of a method's per-sample gradient loops (Fisher, saliency), kept on disk.

    Saved every `every` samples as `<folder>/<desc>-<rank>of<world>.safetensors` (each process
    sums its own share), so that a killed preparation continues where it stopped, with the same
    number of processes."""

    def __init__(self, folder: Path, rank: int = 0, world: int = 1, every: int = 100):
        """Sums of process `rank` of `world` in `folder`, saved every `every` samples."""
        self.folder, self.rank, self.world, self.every = folder, rank, world, every

    def _path(self, desc: str) -> Path:
        """This process's file of the loop named `desc`."""
        return self.folder / f"{desc.replace(' ', '-')}-{self.rank}of{self.world}.safetensors"

    def load(self, desc: str):
        """(samples done, sums) of the loop named `desc`; None when none was saved."""
        path = self._path(desc)
        if not path.exists():
            return None
        if bad := damage(path):
            print(f"warning: {bad}: summing from the start", file=sys.stderr)
            return None
        with safe_open(str(path), "pt") as f:
            done = int(f.metadata()["done"])
        return done, load_file(str(path))

    def save(self, desc: str, done: int, sums: dict[str, torch.Tensor]) -> None:
        """Save the sums of the loop named `desc` after `done` samples, atomically."""
        with atomic_path(self._path(desc)) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in sums.items()}, str(tmp),
                      metadata={"done": str(done)})
