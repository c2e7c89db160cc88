"""A real `ftctl serve` (uvicorn, its worker process) on a free loopback port, in a workspace
training the tiny base; driven with a real HTTP client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftctl.lib.process import wait_for as _wait_for
from tests.train.conftest import configure, examples, write_jsonl

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, root: Path, port: int | None = None, token: str | None = TOKEN, extra_args=()):
        import httpx

        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FTCTL_SERVE_TOKEN": token} if token else \
            {k: v for k, v in os.environ.items() if k != "FTCTL_SERVE_TOKEN"}
        self.log = open(root / f"serve-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "ftctl", "-C", str(root), "serve", "--port",
                                      str(self.port), *extra_args], env=env, stdout=self.log, stderr=self.log)
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
        self.wait_up()

    def wait_up(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ftctl serve exited {self.proc.returncode}: {self.output()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"ftctl serve did not become healthy: {self.output()}")

    def output(self) -> str:
        return (self.root / f"serve-{self.port}.log").read_text(errors="replace")[-3000:]

    def wait_job(self, job_id: str, states=("done", "failed", "cancelled", "interrupted"), timeout: float = 240,
                 until=None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/finetune/status/{job_id}", params={"log_lines": 50}).json()
            if job["state"] in states or (until and until(job)):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still {job['state']}: {job['log_tail']}")

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def prepare(ws, tiny_base) -> None:
    """The tiny base on a 30-example snapshot, committed (a clean tree, as in production)."""
    configure(ws, tiny_base, checkpoint_every=2, max_steps=4)
    data = ws.data_dir("assistant")
    write_jsonl(data / "train.jsonl", examples(30))
    write_jsonl(data / "val.jsonl", examples(6, long_every=2))
    write_jsonl(data / "test.jsonl", examples(4, long_every=5))
    subprocess.run(["git", "commit", "-qam", "configure"], cwd=ws.root, check=True)


@pytest.fixture
def serve_ws(workspace, tiny_base):
    prepare(workspace, tiny_base)
    return workspace


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_base):
    """One workspace and one service for a module's tests (a service start costs seconds)."""
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    root = tmp_path_factory.mktemp("serve") / "ws"
    init(root, model="assistant")
    ws = Workspace(root)
    prepare(ws, tiny_base)
    svc = Service(root)
    yield ws, svc
    svc.stop()


def pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # a zombie no one reaped: dead all the same


def wait_for(predicate, timeout: float = 60, interval: float = 0.1) -> bool:
    return _wait_for(predicate, timeout, interval)
