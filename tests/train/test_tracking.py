"""Experiment tracking (issue 25): train.report_to [tensorboard, mlflow, wandb] for lora, dpo and kto.

MLflow runs against a real tracking server started as a user starts one (`mlflow server` with a
sqlite backend store and served artifacts) on a free loopback port; W&B in offline mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_ftctl, run_json
from tests.train.conftest import configure, examples, write_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    import httpx

    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=log, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        raise AssertionError("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this fixture started
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _track(ws, **train) -> None:
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    cfg = y.load(ws.config_path.read_text())
    cfg["train"].update(train)
    with open(ws.config_path, "w") as f:
        y.dump(cfg, f)


def test_sft_to_mlflow_tensorboard_and_wandb_offline(workspace, tiny_base, mlflow_server):
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    configure(workspace, tiny_base, max_steps=4, log_every=1)
    _track(workspace, report_to=["tensorboard", "mlflow", "wandb"], mlflow_uri=mlflow_server,
           mlflow_experiment="issue25")
    data = workspace.data_dir("assistant")
    write_jsonl(data / "train.jsonl", examples(12))
    write_jsonl(data / "test.jsonl", examples(4, long_every=5))
    out = run_json("train", cwd=workspace.root)
    t = out["tracking"]
    assert all(t[k]["ok"] for k in ("tensorboard", "mlflow", "wandb")), t

    client = MlflowClient(mlflow_server)
    run = client.get_run(t["mlflow"]["run_id"])
    assert run.info.run_name == "assistant@v1.0" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "issue25"
    params = run.data.params
    assert params["ftctl.r"] == "4" and params["ftctl.learning_rate"] == "0.001" and params["learning_rate"] == "0.001"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]  # one point per optimizer step
    assert run.data.metrics["final/train_loss"] == pytest.approx(out["train_loss"], abs=1e-3)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= artifacts
    # recorded in the lineage (the URI as written, redacted)
    lineage = run_json("show", "v1.0", cwd=workspace.root)["training"]["tracking"]
    assert lineage["mlflow"]["run_id"] == run.info.run_id

    # TensorBoard: versioned with the adapter (DVC-tracked), not left in an ignored folder
    events = list((workspace.adapter_dir("assistant", "v1.0") / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and t["tensorboard"]["logs"] == "adapters/assistant/v1.0/tensorboard"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 4

    # W&B offline: a run folder `wandb sync` can upload later, nothing sent
    assert t["wandb"]["mode"] == "offline" and Path(workspace.root, t["wandb"]["run_dir"]).is_dir() \
        if not Path(t["wandb"]["run_dir"]).is_absolute() else Path(t["wandb"]["run_dir"]).is_dir()

    # the comparison joins the version's run
    cmp = run_json("--set", "eval.max_new_tokens=8", "--set", "eval.bootstrap=200", "eval", "--compare", "base",
                   "v1.0", "--metric", "rougeL", "--metric", "exact_match", cwd=workspace.root)
    assert cmp["tracking"]["mlflow"]["ok"], cmp["tracking"]
    run = client.get_run(run.info.run_id)
    assert run.data.metrics["compare/test/rougeL/b"] == pytest.approx(cmp["metrics"]["rougeL"]["b"])
    assert "compare/test/rougeL/diff" in run.data.metrics
    assert run.data.tags["compare.test.rougeL.verdict"].endswith("(vs base)")


def test_unreachable_mlflow_never_stops_training_and_is_said(workspace, tiny_base):
    pytest.importorskip("mlflow")
    configure(workspace, tiny_base, max_steps=2)
    _track(workspace, report_to=["tensorboard", "mlflow"], mlflow_uri=f"http://127.0.0.1:{_free_port()}")
    write_jsonl(workspace.data_dir("assistant") / "train.jsonl", examples(8))
    started = time.monotonic()
    proc = run_ftctl("train", cwd=workspace.root)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 240  # no minutes of retries
    text = proc.stdout + proc.stderr
    assert "tracking failed: mlflow:" in text and "warning: mlflow tracking is off for this run" in text
    shown = run_json("show", "v1.0", cwd=workspace.root)["training"]["tracking"]
    assert shown["mlflow"]["ok"] is False and "Connection" in shown["mlflow"]["error"] or shown["mlflow"]["error"]
    assert shown["tensorboard"]["ok"] is True


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_preference_trainers_report_to_mlflow(workspace, tiny_base, mlflow_server, trainer):
    from mlflow.tracking import MlflowClient

    from tests.loop.test_preference import COLOURS, TINY, disliked, pair, snapshot

    pairs = [pair(t, c, "test" if i % 4 == 0 else "train") for i, (t, c) in enumerate(COLOURS)]
    snapshot(workspace, pairs, tiny_base, {"trainer": trainer, **TINY, "report_to": ["mlflow"],
                                           "mlflow_uri": mlflow_server, "mlflow_experiment": f"issue25-{trainer}"},
             [disliked(t, p["split"]) for (t, _), p in zip(COLOURS, pairs)])
    out = run_json("train", cwd=workspace.root)
    run_id = out["tracking"]["mlflow"]["run_id"]
    client = MlflowClient(mlflow_server)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    run = client.get_run(run_id)
    assert run.data.params["ftctl.method"] == trainer and run.data.params["ftctl.beta"] == "0.1"
    assert "adapter/adapter_config.json" in {a.path for a in client.list_artifacts(run_id, "adapter")}
    assert set(out["tracking"]) == {"mlflow"}
