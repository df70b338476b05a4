"""Resuming: the output folder (its default, the options that must agree, what an existing one
allows), erasure checkpoints (`checkpoint-<step>/` holds
the weights, both optimizers, the RNG state and the base model it was erased from, written
atomically), the check that a resumed run has that base model, and a preparation's running sums."""
from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dualerase.config import Config, differing, saved_config, to_dict
from dualerase.errors import UsageError
from dualerase.integrations.claims import LOCK
from dualerase.storage import atomic_path, replace_folder

PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output: Path) -> list[Path]:
    """Finished checkpoints in `output`, oldest first."""
    found = [p for p in output.glob("checkpoint-*")
             if PATTERN.match(p.name) and (p / "done").exists()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest_checkpoint(output: Path) -> Path | None:
    """The newest finished checkpoint in `output`; None when there is none."""
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
    tmp.mkdir(parents=True)
    save_file(unshared(model.state_dict()), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file({n: t.contiguous() for n, t in ema.items()}, str(tmp / "ema.safetensors"))
    forget, retain = optimizers
    torch.save({"forget": forget.state_dict(),
                "retain": None if retain is forget else retain.state_dict(),
                "step": step, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "state.pt")
    if base is not None:
        (tmp / "base.json").write_text(json.dumps({"model": base}))
    (tmp / "done").write_text(str(step))
    replace_folder(tmp, final)
    for old in checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def disk_full(error: OSError, output: Path | None) -> str | None:
    """For a full disk (or quota), one line: the file, the space to free, where a resume continues.

    None for any other OSError."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    latest = latest_checkpoint(output) if output is not None and output.is_dir() else None
    where = f"from {latest}" if latest else ("(no checkpoint yet: from the start, with the cached "
                                             "work kept)")
    return (f"{error.strerror} writing {error.filename or 'a file'}: free space on that disk, then "
            f"continue with --resume latest {where}")


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
        before, now = (saved_config(saved) if saved.exists() else None), to_dict(cfg)
        if saved.exists() and before != now:
            keys = "a key this version no longer has"
            if before:
                keys = ", ".join(f"{k} {a} -> {b}" for k, a, b in differing(before, now)[:3])
            raise UsageError(f"{output} holds a run with another config ({keys}): resume with the "
                             f"same options (its own: --config {saved}), or pass --overwrite to "
                             "start over")
        if resume != "latest" and not (Path(resume) / "done").exists():
            raise UsageError(f"--resume {resume} is not a finished checkpoint folder: pass "
                             "--resume latest")
        return (output / "metrics.json").exists()
    if (output / "metrics.json").exists():
        raise UsageError(f"{output} already holds a finished run: pass --overwrite to replace it, "
                         "or choose another --output")
    raise UsageError(f"{output} holds an unfinished run: pass --resume latest to continue it, or "
                     "--overwrite to start over")


def check_same_base(output: Path, resume: str, model_id: str) -> None:
    """Refuse to resume a run whose base model's files changed since (its id holds their digest).

    A resumed run continues from weights erased from one base model. Runs written before the
    record existed are not checked.

    Raises:
        UsageError: the run was erased from another model than `model_id`."""
    erased = output / "erase.json"
    checkpoint = latest_checkpoint(output) if resume == "latest" else Path(resume)
    if erased.exists():
        recorded = json.loads(erased.read_text()).get("model")
    elif checkpoint is not None:
        recorded = checkpoint_base(checkpoint)
    else:
        recorded = None
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
        with safe_open(str(path), "pt") as f:
            done = int(f.metadata()["done"])
        return done, load_file(str(path))

    def save(self, desc: str, done: int, sums: dict[str, torch.Tensor]) -> None:
        """Save the sums of the loop named `desc` after `done` samples, atomically."""
        with atomic_path(self._path(desc)) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in sums.items()}, str(tmp),
                      metadata={"done": str(done)})
