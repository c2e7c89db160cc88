"""Health is identity (issue 21): a slot is healthy only when the model it serves is the one
deployed, served by the process ftctl started; a port another process holds is refused before
anything changes. Real pm2, nginx and tiny upstreams (tests/deploy/tiny_server.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import PM2, TINY, get_json, pm2_list, server_args

pytestmark = pytest.mark.integration


def stranger(model_file, port: int, alias: str) -> subprocess.Popen:
    """A server ftctl did not start (a stale one, started by hand), on ``port``."""
    proc = subprocess.Popen([sys.executable, *server_args("tiny", model_file, port, alias)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from ftctl.lib.process import wait_for

    assert wait_for(lambda: _answers(port), 20, 0.1)
    return proc


def _answers(port: int) -> bool:
    try:
        get_json(f"http://127.0.0.1:{port}/v1/models", timeout=2)
        return True
    except OSError:
        return False


def test_a_stale_process_on_the_stable_port_is_not_healthy_and_is_refused(stack):
    s = stack()
    run_json("deploy", "v1.0", cwd=s.root)
    subprocess.run([PM2, "stop", s.app], check=True, capture_output=True)
    # a stale server answers on the port with the very id the app would have
    stale = stranger(s.files["v1.0"], s.port, "assistant@v1.0")
    try:
        out = run_json("status", cwd=s.root)
        assert out["apps"][0]["healthy"] is False  # the right id, but not pm2's process
        before, procs = s.eco.read_text(), pm2_list(s.pm2_home)
        proc = run_ftctl("deploy", "v1.1", cwd=s.root)
        assert proc.returncode == 2, proc.stderr
        assert f"port {s.port} is held by another process (pid {stale.pid}" in proc.stderr
        assert "nothing was changed" in proc.stderr and "hint:" in proc.stderr
        assert s.eco.read_text() == before
        assert {n: p["pm2_env"]["status"] for n, p in pm2_list(s.pm2_home).items()} == \
            {n: p["pm2_env"]["status"] for n, p in procs.items()}
        assert not (s.root / ".ftctl/deploy/assistant.pending.json").exists()
        assert run_json("status", cwd=s.root)["stable"] == "v1.0"
    finally:
        stale.kill()
        stale.wait()
    out = run_json("deploy", "v1.1", cwd=s.root)  # the port is free again: it goes through
    assert out["apps"][0]["healthy"] and out["apps"][0]["served_id"] == "assistant@v1.1"


def test_a_port_held_by_a_stranger_refuses_the_canary_and_changes_nothing(stack):
    s = stack(with_nginx=True)
    run_json("deploy", "v1.0", cwd=s.root)
    include = s.nginx.include.read_text()
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the hand-off left TIME_WAITs
        held.bind(("127.0.0.1", s.canary_port))
        held.listen()
        proc = run_ftctl("deploy", "v1.1", "--canary", "20", cwd=s.root)
    assert proc.returncode == 2 and f"port {s.canary_port} is held by another process" in proc.stderr, proc.stderr
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    assert s.nginx.include.read_text() == include
    status = run_json("status", cwd=s.root)
    assert status["canary"] is None and [h["action"] for h in status["history"]] == ["deploy"]


def test_wait_healthy_wants_the_deployed_model_not_any_answer(stack):
    """The check under every serve: a server answering 200 as another version (or as the right
    version from a process pm2 did not start) is not the deployed one."""
    from ftctl.deploy.rollout import deployer

    s = stack(health_timeout=2)
    dep = deployer(s.ws, "assistant", lambda m: None)
    app = dep.stable_app()
    new = {**app, "args": [a if a != "unset" else "assistant@v1.1" for a in app["args"]]}
    old = stranger(s.files["v1.0"], s.port, "assistant@v1.0")
    try:
        assert dep.identify(s.port).healthy  # the old liveness check passed here
        assert dep.wait_healthy(new, s.app) is False
        why = dep.unhealthy(new, "assistant@v1.1", s.app)
        assert f"port {s.port} answers as assistant@v1.0, not assistant@v1.1" in why and f"pid {old.pid}" in why
        same = {**app, "args": [a if a != "unset" else "assistant@v1.0" for a in app["args"]]}
        assert dep.reports(same, dep.identify(s.port))  # the right id ...
        assert dep.wait_healthy(same, s.app) is False  # ... from a process pm2 does not run
    finally:
        old.kill()
        old.wait()


def test_a_gguf_whose_size_differs_from_the_export_is_refused(stack):
    from tests.deploy.conftest import add_versions

    s = stack()
    run_json("deploy", "v1.0", cwd=s.root)

    def record_size(lock):
        e = lock.state("assistant").versions["v1.1"].exports[0]
        e.bytes = s.files["v1.1"].stat().st_size

    with s.ws.run_lock("test"):
        s.ws.record("test: sizes", record_size)
    data = s.files["v1.1"].read_bytes()
    s.files["v1.1"].write_bytes(data[:-3])  # a partial copy
    before = s.eco.read_text()
    proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 2 and "the file is truncated" in proc.stderr and str(s.files["v1.1"]) in proc.stderr
    s.files["v1.1"].write_bytes(b"PK\x03\x04 a zip, not a model")
    add_versions(s.ws, "assistant", {"v1.1": s.files["v1.1"]})  # even with its sha256 recorded
    proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 2 and "is not a GGUF file" in proc.stderr
    assert s.eco.read_text() == before and get_json(s.stable_url())["data"][0]["id"] == "assistant@v1.0"
