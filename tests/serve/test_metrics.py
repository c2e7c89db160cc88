"""/metrics from the registry, the job store and the CLI's event log (no service needed)."""

from __future__ import annotations

import json

from ftctl.registry import lockfile
from ftctl.registry.lockfile import Deployment, ModelState, VersionEntry
from ftctl.serve.jobs import JobStore


def test_metrics_cover_versions_deployment_collect_cycle_and_jobs(workspace):
    from prometheus_client import CollectorRegistry, generate_latest

    from ftctl.serve.metrics import FtctlCollector

    lock = workspace.read_lock()
    lock.models["assistant"] = ModelState(
        versions={v: VersionEntry(version=v, created="2026-01-01T00:00:00+00:00",
                                  metrics={"train_loss": loss, "rougeL": 0.1 * i})
                  for i, (v, loss) in enumerate((("v1.0", 2.0), ("v1.1", 1.5)), 1)},
        dataset={"card": {"read": 10, "kept": 6, "filtered": {"dedup": 2, "short": 1}, "rejected": {"bad": 1}}},
        deployment=Deployment(stable="v1.0", canary={"version": "v1.1", "percent": 20}))
    lockfile.write(workspace.lock_path, lock)
    with open(workspace.state_dir / "log.jsonl", "a") as f:
        f.write(json.dumps({"time": "2026-01-02T03:00:00+00:00", "command": "cycle", "ok": True}) + "\n")
        f.write(json.dumps({"time": "2026-01-02T04:00:00+00:00", "command": "train", "ok": False}) + "\n")
    store = JobStore(workspace.state_dir / "serve" / "jobs.sqlite")
    done = store.add("train", {}, ["train"])
    store.update(done["id"], state="done", started=100.0, finished=130.0)
    store.add("evaluate", {}, ["eval"])

    registry = CollectorRegistry()
    registry.register(FtctlCollector(lambda: workspace, store))
    text = generate_latest(registry).decode()
    for line in (
        'ftctl_versions{model="assistant"} 2.0',
        'ftctl_version_metric{metric="train_loss",model="assistant",ref="latest",version="v1.1"} 1.5',
        'ftctl_version_metric{metric="train_loss",model="assistant",ref="stable",version="v1.0"} 2.0',
        'ftctl_deployment_stable{model="assistant",version="v1.0"} 1.0',
        'ftctl_canary_percent{model="assistant",version="v1.1"} 20.0',
        'ftctl_collect_rows{model="assistant",outcome="read"} 10.0',
        'ftctl_collect_rows{model="assistant",outcome="filtered"} 3.0',
        'ftctl_collect_rows{model="assistant",outcome="rejected"} 1.0',
        "ftctl_last_cycle_success 1.0",
        "ftctl_last_cycle_timestamp_seconds 1.7673228e+09",
        "ftctl_jobs_queued 1.0",
        'ftctl_job_duration_seconds_bucket{kind="train",le="60.0"} 1.0',
        'ftctl_job_duration_seconds_sum{kind="train"} 30.0',
    ):
        assert line in text, line


def test_a_cycle_with_nothing_to_do_is_a_success_with_its_exit_code(workspace):
    """cron's quiet night (exit 3) must not page anyone: success 1, the exit code beside it."""
    from prometheus_client import CollectorRegistry, generate_latest
    from ruamel.yaml import YAML

    from ftctl.serve.metrics import FtctlCollector
    from tests.conftest import run_ftctl

    (workspace.root / "empty.jsonl").touch()
    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["sources"] = [{"name": "events", "kind": "jsonl", "path": "empty.jsonl"}]
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    assert run_ftctl("cycle", cwd=workspace.root).returncode == 3
    registry = CollectorRegistry()
    registry.register(FtctlCollector(lambda: workspace, JobStore(workspace.state_dir / "serve" / "jobs.sqlite")))
    text = generate_latest(registry).decode()
    assert "ftctl_last_cycle_success 1.0" in text and "ftctl_last_cycle_exit_code 3.0" in text

    cfg["sources"] = []  # a cycle that cannot run: a real failure
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    assert run_ftctl("cycle", cwd=workspace.root).returncode not in (0, 3)
    text = generate_latest(registry).decode()
    assert "ftctl_last_cycle_success 0.0" in text
