"""`ftctl train --nproc 2`: torchrun, DDP over gloo on CPU, matches a single-process run."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import configure
from tests.train.test_train import run_plugin


@pytest.mark.integration
def test_two_processes_match_one(train_ws, ftctl, tmp_path):
    # global batch 4 either way: 2 processes x 2, or 1 process x 4
    configure(train_ws, train_ws.config.base, max_steps=6, batch_size=2, learning_rate=5e-2, packing=False,
              dropout=0.0, checkpoint_every=3)
    proc = ftctl("--json", "train", "--nproc", "2", cwd=train_ws.root, timeout=900)
    assert proc.returncode == 0, proc.stderr
    ddp = json.loads(proc.stdout)
    assert ddp["version"] == "v1.0" and ddp["steps"] == 6

    single = run_plugin(train_ws, tmp_path / "single", batch_size=4, packing=False, dropout=0.0)
    assert single.steps == 6
    first = single.metrics["first_loss"]
    assert single.metrics["train_loss"] < first and ddp["train_loss"] < first  # both learned
    assert ddp["train_loss"] == pytest.approx(single.metrics["train_loss"], rel=0.05)
