"""Faults while training: kill -9 then --resume, disk full while checkpointing."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftctl.errors import FtctlError
from tests.train.conftest import configure
from tests.train.test_train import adapter_weights, no_version, run_plugin, train, versions


def complete_checkpoints(ws):
    return sorted(p.parent.name for p in (ws.state_dir / "runs").rglob("checkpoint-*/.ftctl-complete"))


@pytest.mark.integration
def test_kill_9_mid_run_then_resume_finishes_the_same_run(train_ws, tmp_path):
    configure(train_ws, train_ws.config.base, max_steps=16, checkpoint_every=2, batch_size=1, max_length=128)
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "--json", "train"], cwd=train_ws.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not complete_checkpoints(train_ws) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    no_version(train_ws)
    run_json = next((train_ws.state_dir / "runs" / "assistant").glob("*/run.json"))
    assert json.loads(run_json.read_text())["status"] == "running"

    out = subprocess.run([sys.executable, "-m", "ftctl", "--json", "train", "--resume"], cwd=train_ws.root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["version"] == "v1.0" and r["steps"] == 16
    assert versions(train_ws)["v1.0"].training["run"] == run_json.parent.name  # the same run, finished
    assert json.loads(run_json.read_text())["status"] == "done"
    # model, optimizer, scheduler, RNG and data position restored: same weights as never interrupted
    ref = adapter_weights(run_plugin(train_ws, tmp_path / "ref").adapter_dir)
    got = adapter_weights(train_ws.root / r["adapter"])
    import torch

    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(train_ws, monkeypatch):
    import transformers

    configure(train_ws, train_ws.config.base, max_steps=6, checkpoint_every=2)
    real = transformers.Trainer._save_rng_state

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", full_disk)
    with pytest.raises(FtctlError) as e:
        train(train_ws)
    assert "disk full" in e.value.message and "--resume" in e.value.hint
    no_version(train_ws)
    assert complete_checkpoints(train_ws) == ["checkpoint-2"]
    assert not list((train_ws.state_dir / "runs").rglob("checkpoint-4"))  # the partial one is gone

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", real)
    r = train(train_ws, resume=True)
    assert r["version"] == "v1.0" and r["steps"] == 6
