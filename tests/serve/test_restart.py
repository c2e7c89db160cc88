"""kill -9 of the service mid-training, then a restart: the job is interrupted and resumable,
the workspace is intact, and `resume` finishes the run from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from ftctl.serve.jobs import JobStore
from tests.serve.conftest import Service, pid_gone, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_and_resume(serve_ws):
    root = serve_ws.root
    store = JobStore(root / ".ftctl" / "serve" / "jobs.sqlite")
    svc = Service(root)
    job = svc.http.post("/finetune/start", json={"max_steps": 10}).json()
    runs = root / ".ftctl" / "runs" / "assistant"
    assert wait_for(lambda: any(runs.glob("*/checkpoint-*/.ftctl-complete")), 240, 0.05), svc.output()
    job_pid = store.get(job["id"])["pid"]
    worker_pid, _ = store.worker_beat()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout

    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait()
    svc.http.close()
    # the worker and the job die with the service: nothing keeps training (or holding the lock)
    assert wait_for(lambda: pid_gone(worker_pid) and pid_gone(job_pid), 30), (worker_pid, job_pid)
    assert store.get(job["id"])["state"] == "running"  # nobody was left to say otherwise
    assert serve_ws.read_lock().state("assistant").versions == {}
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout == head

    svc = Service(root)
    try:
        seen = svc.http.get(f"/jobs/{job['id']}", params={"log_lines": 100}).json()
        assert seen["state"] == "interrupted" and seen["resumable"] is True
        assert seen["log_tail"], "the job's log survives the kill"
        r = svc.http.post(f"/jobs/{job['id']}/resume")
        assert r.status_code == 202, r.text
        again = r.json()
        assert again["command"] == ["ftctl", "train", "--resume"] and again["resumed_from"] == job["id"]
        done = svc.wait_job(again["id"])
        assert done["state"] == "done", done["log_tail"]
        assert any("resuming from checkpoint-" in line for line in done["log_tail"])
        assert done["result"]["version"] == "v1.0" and done["result"]["steps"] == 10
        assert set(serve_ws.read_lock().state("assistant").versions) == {"v1.0"}
        # the interrupted job's run is finished now: nothing left to resume
        assert svc.http.get(f"/jobs/{job['id']}").json()["resumable"] is False
        assert svc.http.post(f"/jobs/{job['id']}/resume").status_code == 422
    finally:
        svc.stop()


def test_a_second_service_on_the_same_workspace_is_refused(workspace):
    from tests.conftest import run_ftctl

    svc = Service(workspace.root, token=None)
    try:
        proc = run_ftctl("--json", "serve", "--port", "1", cwd=workspace.root)
        assert proc.returncode == 4 and "another `ftctl serve`" in proc.stdout
    finally:
        svc.stop()


def test_a_job_waits_for_the_lock_as_configured_and_can_be_cancelled(workspace):
    from tests.conftest import hold_run_lock

    holder = hold_run_lock(workspace.root, 120)
    svc = Service(workspace.root, extra_args=["--lock-wait", "60"])
    try:
        job = svc.http.post("/finetune/start", json={"max_steps": 2}).json()
        waiting = svc.wait_job(job["id"], states=("running",), timeout=30)
        assert waiting["command"] == ["ftctl", "train", "--max-steps", "2"]
        time.sleep(2)
        assert svc.http.get(f"/jobs/{job['id']}").json()["state"] == "running"  # still waiting, not refused
        r = svc.http.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] in ("running", "cancelled")
        cancelled = svc.wait_job(job["id"], timeout=30)
        assert cancelled["state"] == "cancelled" and cancelled["resumable"] is False
        assert holder.poll() is None  # the lock's holder was never disturbed
        metrics = svc.http.get("/metrics").text
        assert 'ftctl_jobs{state="cancelled"} 1.0' in metrics
    finally:
        svc.stop()
        holder.kill()
        holder.wait()
