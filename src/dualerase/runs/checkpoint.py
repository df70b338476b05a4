"""Erasure checkpoints: `checkpoint-<step>/` holds the weights, both optimizers, the RNG state and the base model it
was erased from, atomically."""
from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dualerase.storage import atomic_path, replace_folder

PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output: Path) -> list[Path]:
    """Finished checkpoints in `output`, oldest first."""
    found = [p for p in output.glob("checkpoint-*") if PATTERN.match(p.name) and (p / "done").exists()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest_checkpoint(output: Path) -> Path | None:
    found = checkpoints(output)
    return found[-1] if found else None


def save_checkpoint(output: Path, step: int, model: torch.nn.Module, optimizers, base: str | None = None,
                    keep: int = 2, ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint-<step> (step = outer steps finished) via a temporary folder, then drop all but `keep`. `base`
    is the id of the model erasure started from (path and content digest), which a resume must run on again; `ema`
    the moving average of the weights (erase.ema_decay)."""
    final = output / f"checkpoint-{step}"
    tmp = output / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(unshared(model.state_dict()), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file({n: t.contiguous() for n, t in ema.items()}, str(tmp / "ema.safetensors"))
    forget, retain = optimizers
    torch.save({"forget": forget.state_dict(), "retain": None if retain is forget else retain.state_dict(),
                "step": step, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "state.pt")
    if base is not None:
        (tmp / "base.json").write_text(json.dumps({"model": base}))
    (tmp / "done").write_text(str(step))
    replace_folder(tmp, final)
    for old in checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def disk_full(error: OSError, output: Path | None) -> str | None:
    """For a full disk (or quota), one line naming the file, the free space to make and where a resume continues from;
    None for any other OSError."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    latest = latest_checkpoint(output) if output is not None and output.is_dir() else None
    where = f"from {latest}" if latest else "(no checkpoint yet: from the start, with the cached work kept)"
    return (f"{error.strerror} writing {error.filename or 'a file'}: free space on that disk, then continue with "
            f"--resume latest {where}")


def checkpoint_base(path: Path) -> str | None:
    """The id of the base model a checkpoint was erased from; None for a checkpoint that predates the record."""
    record = path / "base.json"
    return json.loads(record.read_text())["model"] if record.exists() else None


def unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors accepts: a tied embedder is listed under every block's name with one storage, which
    `save_file` refuses, so repeats are cloned. (Loading it into a tied model writes equal values into one tensor.)"""
    seen, out = set(), {}
    for name, value in state.items():
        value = value.contiguous()
        out[name] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    return out


def load_checkpoint(path: Path, model: torch.nn.Module, optimizers, ema: dict[str, torch.Tensor] | None = None) -> int:
    """Restore weights, optimizer states, RNG and (into `ema`, in place) the moving average from `path`; returns the
    number of outer steps finished."""
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if ema is not None:
        for n, t in load_file(str(path / "ema.safetensors")).items():
            ema[n].copy_(t)
    state = torch.load(path / "state.pt", weights_only=False, map_location="cpu")  # states follow their params
    forget, retain = optimizers
    forget.load_state_dict(state["forget"])
    if retain is not forget:
        retain.load_state_dict(state["retain"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


class PartialSums:
    """Running sums of a method's per-sample gradient loops (Fisher, saliency), saved every `every` samples as
    `<folder>/<desc>-<rank>of<world>.safetensors` (each process sums its own share), so that a killed preparation
    continues where it stopped, with the same number of processes."""

    def __init__(self, folder: Path, rank: int = 0, world: int = 1, every: int = 100):
        self.folder, self.rank, self.world, self.every = folder, rank, world, every

    def _path(self, desc: str) -> Path:
        return self.folder / f"{desc.replace(' ', '-')}-{self.rank}of{self.world}.safetensors"

    def load(self, desc: str):
        path = self._path(desc)
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as f:
            done = int(f.metadata()["done"])
        return done, load_file(str(path))

    def save(self, desc: str, done: int, sums: dict[str, torch.Tensor]) -> None:
        with atomic_path(self._path(desc)) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in sums.items()}, str(tmp), metadata={"done": str(done)})
