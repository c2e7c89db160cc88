"""The lora_swap router's pure parts: the hash split, the routing table, the relabelling.
(The router on a real llama-server: tests/deploy/test_lora_swap.py.)"""

from __future__ import annotations

import json
import os

import pytest

from ftctl_plugins.deployers.lora_router import Table, pick, relabel, relabel_sse, user_key


@pytest.mark.parametrize("percent", [1, 5, 20, 50, 95])
def test_the_share_matches_the_percent(percent):
    keys = [f"user-{i}" for i in range(20000)]
    share = sum(pick(k, percent) for k in keys) / len(keys)
    assert abs(share - percent / 100) < 0.015


def test_zero_and_a_hundred_are_exact_and_a_key_keeps_its_side():
    keys = [f"u{i}" for i in range(5000)]
    assert not any(pick(k, 0) for k in keys) and all(pick(k, 100) for k in keys)
    assert [pick(k, 30) for k in keys] == [pick(k, 30) for k in keys]
    # raising the share only adds users: none of the 20% leaves the canary at 50%
    assert all(pick(k, 50) for k in keys if pick(k, 20))


def state(tmp_path, **extra):
    s = {"adapters": ["/a.gguf", "/b.gguf"], "scale": 0.5,
         "stable": {"path": "/a.gguf", "label": "m@v1.0"}, **extra}
    path = tmp_path / "m.json"
    tmp = tmp_path / "m.json.tmp"
    tmp.write_text(json.dumps(s))
    os.replace(tmp, path)  # as the deployer writes it: a new file each time
    return path


def test_the_table_follows_the_state_file(tmp_path):
    table = Table(tmp_path / "m.json")
    assert table.refresh().choose("x") is None  # nothing deployed: passed on unchanged
    state(tmp_path)
    t = table.refresh().choose("x")
    assert t.label == "m@v1.0" and t.lora == [{"id": 0, "scale": 0.5}, {"id": 1, "scale": 0.0}]
    state(tmp_path, canary={"path": "/b.gguf", "label": "m@v1.1"}, canary_percent=100)
    t = table.refresh().choose("x")
    assert t.label == "m@v1.1" and t.lora == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.5}]
    state(tmp_path, canary={"path": "/b.gguf", "label": "m@v1.1"})  # no share recorded: stable
    assert table.refresh().choose("x").label == "m@v1.0"
    (tmp_path / "m.json").write_text("{torn")
    assert table.refresh().choose("x").label == "m@v1.0"  # a bad file keeps the last good routing


def test_answers_name_the_version():
    assert relabel({"model": "x", "choices": []}, "m@v1.1")["model"] == "m@v1.1"
    assert relabel({"error": {"code": 400}}, "m@v1.1") == {"error": {"code": 400}}
    line = relabel_sse('data: {"model": "x", "choices": [{"delta": {"content": "é"}}]}', "m@v1.1")
    assert json.loads(line[5:]) == {"model": "m@v1.1", "choices": [{"delta": {"content": "é"}}]}
    assert relabel_sse("data: [DONE]", "m") == "data: [DONE]" and relabel_sse("", "m") == ""
    assert relabel_sse("data: {torn", "m") == "data: {torn"
    assert user_key({"user": "alice"}, {"x-user-id": "bob"}) == "alice"
    assert user_key({"user": 3}, {"x-user-id": "bob"}) == "bob" and user_key({}, {}) is None


def test_the_public_port_passes_only_the_client_paths_and_caps_the_body(tmp_path):
    """Refused before the upstream is asked (here nothing listens upstream: a passed request gets 502)."""
    from starlette.testclient import TestClient

    from ftctl_plugins.deployers.lora_router import app

    state(tmp_path)
    with TestClient(app("http://127.0.0.1:9", tmp_path / "m.json", max_body=1024)) as c:
        for method, path in (("POST", "/lora-adapters"), ("GET", "/lora-adapters"), ("POST", "/props"),
                             ("POST", "/slots/0"), ("GET", "/slots"), ("POST", "/tokenize"), ("GET", "/")):
            r = c.request(method, path, json=[{"id": 0, "scale": 1}])
            assert r.status_code == 404 and "not served on this port" in r.json()["error"]["message"], path
        assert c.get("/v1/chat/completions").status_code == 405
        assert c.post("/v1/models").status_code == 405
        r = c.post("/v1/chat/completions", content=b"x" * 1025)
        assert r.status_code == 413 and "1024 bytes" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", content=b"x" * 100, headers={"Content-Length": "99999"})
        assert r.status_code == 413
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("GET", "/metrics"),
                             ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("POST", "/completion")):
            assert c.request(method, path, json={}).status_code == 502, path  # passed on
