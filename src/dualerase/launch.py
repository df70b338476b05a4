"""This process's place in a launch (accelerate launch / torchrun, or one process alone)."""
from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState


def processes() -> PartialState:
    """This process's place in the launch: rank, device, barriers (accelerate's PartialState).

    Under accelerate launch / torchrun, else one process. On machines without CUDA several
    processes talk over gloo."""
    import torch
    from accelerate import PartialState

    # Other processes wait at barriers while the main one encodes the latent cache or computes
    # FID: allow hours.
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=3))


def is_main_process() -> bool:
    """Whether this process speaks for the launch: rank 0, or a lone process.

    Read from the environment (torchrun's / accelerate launch's RANK), so that reporting an error
    needs no process group."""
    return os.environ.get("RANK", "0") == "0"


def main_decides(value):
    """The main process's `value`, on every process.

    So that all take the same branch, and meet at the same barriers."""
    if processes().num_processes == 1:
        return value
    import torch

    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
