"""Experiment trackers (--report-to tensorboard / wandb), through accelerate's tracker classes.

They are fed every outer step's log record and, at the end, the scores before and after."""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import TYPE_CHECKING

from dualerase.errors import UsageError

if TYPE_CHECKING:
    from dualerase.config import Config

TRACKERS = ("tensorboard", "wandb")


def _flat(d: dict, prefix: str = "", numbers_only: bool = True) -> dict:
    """Nested dicts flattened to "a/b" keys.

    Only numbers (a log), or every value as a number, bool or string (a config)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/", numbers_only))
        elif isinstance(v, numbers.Number) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
        elif not numbers_only:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, str)) else str(v)
    return out


def check_trackers(names: list[str]) -> None:
    """Refuse (UsageError), before any work, a tracker unknown here or whose package is missing."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    for name in names:
        if name not in TRACKERS:
            raise UsageError(f"unknown tracker {name!r} for --report-to: use "
                             f"{' or '.join(TRACKERS)}")
        if not available[name]():
            raise UsageError(f"--report-to {name} needs {name}: pip install 'dualerase[{name}]'")


class Trackers:
    """The trackers named in `names` for one run (main process only; an empty list: none).

    TensorBoard writes under `output`/logs/; W&B logs to its project `dualerase`
    (`WANDB_MODE=offline` keeps it local). Each starts with the run's config `cfg` and is named
    `run_name`."""

    def __init__(self, names: list[str], output: Path, cfg: Config, run_name: str):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers = []  # names were checked before any work (check_trackers, in job.run)
        from dualerase.config import to_dict

        settings = {k.replace("/", "."): v
                    for k, v in _flat(to_dict(cfg), numbers_only=False).items()}
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            # W&B: accelerate's first argument is the project
            tracker = (cls(run_name, logging_dir=output / "logs") if name == "tensorboard"
                       else cls("dualerase", name=run_name))
            if hasattr(tracker, "start"):
                tracker.start()
            tracker.store_init_configuration(settings)
            self.trackers.append(tracker)

    def log(self, values: dict, step: int) -> None:
        """Every number in `values` (nested dicts as a/b), at `step`."""
        numbers_only = _flat(values)
        for tracker in self.trackers:
            tracker.log(numbers_only, step=step)

    def finish(self) -> None:
        """End every tracker's run."""
        for tracker in self.trackers:
            tracker.finish()
