"""A run's checkpoints count only once complete, and the error a run that cannot finish raises.

Light (no torch): the trainer module and its transformers callbacks both import it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ftctl.api import FtctlError

COMPLETE = ".ftctl-complete"  # written into a checkpoint dir once every file of it is saved


class TrainingFailed(FtctlError):
    """Training started but could not finish (NaN loss, disk full, ...): no version is created."""


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose save finished (a crash mid-save leaves no marker)."""
    done = [p for p in Path(run_dir).glob("checkpoint-*") if (p / COMPLETE).is_file()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def drop_incomplete(run_dir: Path) -> None:
    for p in Path(run_dir).glob("checkpoint-*"):
        if not (p / COMPLETE).is_file():
            shutil.rmtree(p, ignore_errors=True)


