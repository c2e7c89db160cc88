"""`ftctl canary check` on real pm2 + nginx, feedback rows written to real PostgreSQL by the test.

Upstreams are tiny servers that answer with their version alias and serve llama-server's
/metrics counters; the decision comes from what "users" rated each served version.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import pm2_list, write_yaml

pytestmark = pytest.mark.integration


def configure_loop(ws, feedback, **canary) -> None:
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(ws.config_path.read_text())
    data["sources"] = [feedback.source()]
    data["curate"] = {"scrub": {"enabled": False}}
    data["deploy"]["canary"] = {"min_rated": 30, "steps": [5, 20, 50, 100], **canary}
    write_yaml(ws.config_path, data)
    ws.__dict__.pop("loaded", None)


@pytest.fixture
def live(stack, feedback):
    """v1.0 stable, v1.1 a 20% canary behind nginx (tiny upstreams serving /metrics); feedback in
    PostgreSQL."""
    s = stack(with_nginx=True)
    configure_loop(s.ws, feedback)
    run_json("deploy", "v1.0", cwd=s.root)
    run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)
    return s


@contextlib.contextmanager
def slow_endpoint(seconds: float):
    """A /metrics URL whose server accepts, waits ``seconds``, then hangs up without answering."""
    srv = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        while not done.is_set():
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                done.wait(seconds)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/metrics"
    finally:
        done.set()
        srv.close()


class Load:
    """Steady requests through nginx while the canary moves; counts what failed."""

    def __init__(self, url: str):
        self.url, self.ok, self.failed, self.stop = url, 0, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(self.url)
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        # bounded by time, not a count: on a fast machine a count ran out before the last stage
        # (20,000 requests answered, then "no progress")
        until = time.monotonic() + 900
        while time.monotonic() < until:
            if self.stop.is_set():
                return
            try:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                conn.request("POST", u.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                (self.failed.append(resp.status) if resp.status != 200 else None)
                self.ok += resp.status == 200
            except OSError as e:
                self.failed.append(repr(e))

    def wait(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` more requests were answered (so both sides served some in this stage)."""
        want, deadline = self.ok + len(self.failed) + n, time.monotonic() + timeout
        while self.ok + len(self.failed) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.ok + len(self.failed) >= want, "the load made no progress"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def test_canary_rated_better_is_stepped_up_then_promoted_under_load(live, feedback):
    s = live
    feedback.add("assistant@v1.0", [3, 4, 3, 4, 4] * 8)  # stable: 3.6
    feedback.add("assistant@v1.1", [5, 5, 4, 5, 5] * 8)  # canary: 4.8
    feedback.add("assistant@v7.7", [1])  # a version nobody deployed: reported, not counted
    with Load(s.nginx.url()) as load:
        load.wait(40)  # answers at 20%: the stage's traffic and latency evidence
        out = run_json("canary", "check", cwd=s.root)
        print("check 1:", out["decision"], "|", out["reason"])
        assert out["decision"] == "step" and out["percent"] == 50 and out["applied"], out
        ev = out["evidence"]
        assert ev["rated"] == {"stable": 40, "canary": 40} and ev["signal"] == "rating"
        assert ev["test"]["verdict"] == "better" and ev["test"]["ci"][0] > 0
        assert ev["latency"]["stable"]["ok"] and ev["latency"]["canary"]["ms_per_token"] == pytest.approx(20, rel=0.01)
        assert ev["latency"]["canary"]["window"] == "stage" and ev["latency"]["canary"]["window_tokens"] > 0
        # nginx logged the stage's requests per side: all answered, none failed
        assert ev["traffic"]["ok"] and ev["traffic"]["canary"]["requests"] > 0 and ev["traffic"]["stable"]["requests"] > 0
        assert ev["traffic"]["canary"]["errors"] == 0 and ev["traffic"]["stable"]["errors"] == 0
        assert ev["served"]["unmatched"] == {"assistant@v7.7": 1}
        assert out["status"]["canary"]["percent"] == 50

        # the next step is judged on feedback given at 50%
        held = run_json("canary", "check", cwd=s.root)
        print("check 2:", held["decision"], "|", held["reason"])
        assert held["decision"] == "hold" and held["needs"] == 60, held
        feedback.add("assistant@v1.0", [4, 3, 4] * 12)
        feedback.add("assistant@v1.1", [5, 4, 5] * 12)
        load.wait(20)
        out = run_json("canary", "check", cwd=s.root)
        print("check 3:", out["decision"], "|", out["reason"])
        assert out["decision"] == "promote" and out["applied"], out
    assert out["status"]["stable"] == "v1.1" and out["status"]["canary"] is None
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    print(f"load through nginx: {load.ok} ok, {len(load.failed)} failed")
    assert load.failed == [] and load.ok > 0  # steady load: 0 failed requests through every transition
    status = run_json("status", cwd=s.root)
    checks = [h for h in status["history"] if h["action"] == "canary check"]
    assert [h["result"] for h in checks] == ["step", "hold", "promote"]
    assert checks[0]["evidence"]["test"]["verdict"] == "better" and "4.80" in checks[0]["detail"]
    assert [h["action"] for h in status["history"]][-2:] == ["canary check", "promote"]
    human = run_ftctl("status", cwd=s.root, env={"COLUMNS": "200"})
    assert "canary check" in human.stdout and "promote" in human.stdout


def test_too_little_evidence_holds_metrics_down_holds_rated_worse_rolls_back(live, feedback):
    s = live
    feedback.add("assistant@v1.0", [4] * 35)
    feedback.add("assistant@v1.1", [5, 4] * 5)
    feedback.add("assistant@v1.1", [1], answer=None)  # no answer recorded: not a rating of anything
    human = run_ftctl("canary", "check", cwd=s.root, env={"COLUMNS": "200"})
    assert human.returncode == 0 and "hold" in human.stdout and "needs 20 more rated answers" in human.stdout, human
    assert "1 feedback row(s) could not be read, counted for neither side: 1 missing_field:response" in human.stdout
    out = run_json("canary", "check", cwd=s.root)
    print("hold:", out["reason"])
    assert out["decision"] == "hold" and out["needs"] == 20 and not out["applied"]
    assert out["status"]["canary"] == {"version": "v1.1", "percent": 20, "app": f"{s.app}-canary"}

    # enough ratings, but the metrics endpoint is down: a clear hold, not a crash
    feedback.add("assistant@v1.1", [5, 4] * 15)
    out = run_json("--set", "deploy.canary.metrics_url=http://127.0.0.1:9/metrics", "canary", "check", cwd=s.root)
    print("metrics down:", out["reason"])
    assert out["decision"] == "hold" and "/metrics unavailable" in out["reason"], out
    assert "127.0.0.1:9" in out["reason"] and out["evidence"]["latency"]["canary"]["ok"] is False

    # a rollback asked for while a check is running (its /metrics slow to answer) is refused with
    # the check named; the check finishes and records its decision: nothing half-done
    with slow_endpoint(seconds=4) as url:
        cmd = [sys.executable, "-m", "ftctl", "--json", "--set", f"deploy.canary.metrics_url={url}", "canary", "check"]
        checking = subprocess.Popen(cmd, cwd=s.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lock_info = s.root / ".ftctl" / "run.lock.json"
        deadline = time.monotonic() + 30
        while not (lock_info.exists() and "canary check" in lock_info.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = run_ftctl("rollback", cwd=s.root)
        out = json.loads(checking.communicate(timeout=60)[0])
    assert proc.returncode == 4 and "holds the workspace lock: `canary check`" in proc.stderr, proc.stderr
    assert checking.returncode == 0 and out["decision"] == "hold" and "/metrics unavailable" in out["reason"]
    assert run_json("status", cwd=s.root)["canary"]["version"] == "v1.1"

    # users turn against the canary: the cron cycle (cycle.deploy: true) rolls it back without a person,
    # then finds too little new training data (exit 3)
    feedback.add("assistant@v1.1", [1, 2, 1] * 30)
    proc = run_ftctl("--set", "cycle.deploy=true", "--set", "cycle.min_new_examples=100000", "cycle", cwd=s.root,
                     env={"COLUMNS": "200"})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "decision: rollback: users rate the canary worse" in proc.stdout
    status = run_json("status", cwd=s.root)
    assert status["stable"] == "v1.0" and status["canary"] is None
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    history = status["history"]
    print("cycle:", history[-2]["result"], "|", history[-2]["detail"])
    assert history[-2]["evidence"]["test"]["verdict"] == "worse"
    assert [h["result"] for h in history if h["action"] == "canary check"] == ["hold"] * 4 + ["rollback"]
    assert [h["action"] for h in history][-2:] == ["canary check", "rollback"]


def test_canary_failing_requests_is_rolled_back_on_the_access_log_though_rated_well(stack, feedback):
    """A canary whose server answers a quarter of requests with 500s: users rate the answers
    they got well, but nginx's access log shows the failures, and the check rolls it back."""
    s = stack(with_nginx=True)
    configure_loop(s.ws, feedback, min_requests=40)
    v11 = s.ws.read_lock().state("assistant").versions["v1.1"].exports[0].path
    (s.root / (v11 + ".fail")).write_text("0.25")  # the tiny upstream fails 1 in 4 answers of v1.1
    run_json("deploy", "v1.0", cwd=s.root)
    run_json("deploy", "v1.1", "--canary", "50", cwd=s.root)
    feedback.add("assistant@v1.0", [4] * 35)
    feedback.add("assistant@v1.1", [4, 5] * 20)
    with Load(s.nginx.url()) as load:
        load.wait(200)
    assert 10 < len(load.failed) < 60 and set(load.failed) == {500}, load.failed[:5]
    out = run_json("canary", "check", cwd=s.root)
    print("errors:", out["reason"])
    assert out["decision"] == "rollback" and "fails more requests" in out["reason"], out
    errors = out["evidence"]["errors"]
    assert errors["verdict"] == "worse" and errors["stable_rate"] == 0 and 0.2 < errors["canary_rate"] < 0.3
    assert out["evidence"]["traffic"]["canary"]["errors"] == len(load.failed)
    status = run_json("status", cwd=s.root)
    assert status["stable"] == "v1.0" and status["canary"] is None

    # an access log ftctl cannot read (here a directory: file modes do not stop root) is a clear
    # hold, not a crash, and not a silent pass
    run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)
    feedback.add("assistant@v1.0", [4] * 35)
    feedback.add("assistant@v1.1", [4, 5] * 20)
    out = run_json("--set", f"deploy.pm2.nginx_access_log={s.nginx.prefix}", "canary", "check", "--dry-run",
                   cwd=s.root)
    assert out["decision"] == "hold" and "cannot judge server errors" in out["reason"], out
    assert str(s.nginx.prefix) in out["reason"]


def test_no_canary_is_a_clear_error(stack, feedback):
    s = stack()
    configure_loop(s.ws, feedback)
    proc = run_ftctl("canary", "check", cwd=s.root)
    assert proc.returncode == 2 and "no live canary" in proc.stderr


def test_ratings_of_blank_answers_are_evidence(workspace, feedback):
    """A canary that answers nothing, rated down for it: those ratings count. The source reads a
    blank answer (a NULL one is still missing), and only curation keeps it out of training."""
    from ftctl.deploy import canary
    from tests.collect.conftest import configure
    from tests.loop.conftest import add_versions

    configure(workspace, [feedback.source()])
    add_versions(workspace, "assistant", ["v1.0", "v1.1"])
    feedback.add("assistant@v1.0", [4, 5])
    feedback.add("assistant@v1.1", [1, 1], answer="")
    feedback.add("assistant@v1.1", [2], answer=" \n")
    feedback.add("assistant@v1.1", [3], answer="It ships tomorrow.")
    feedback.add("assistant@v1.1", [1], answer=None)
    ev = canary.ratings(workspace, "assistant", {"stable": "v1.0", "canary": "v1.1"}, None, "rating", print)
    assert sorted(ev["scores"]["canary"]) == [1, 1, 2, 3] and sorted(ev["scores"]["stable"]) == [4, 5]
    assert ev["rejected"] == {"missing_field:response": 1}
