"""deploy / canary / promote / rollback / status against real pm2 and nginx (tiny upstreams)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import PM2, get_json, pm2_list, served_ids

pytestmark = pytest.mark.integration


def app_model_arg(s, name=None) -> str:
    proc = pm2_list(s.pm2_home)[name or s.app]
    args = proc["pm2_env"]["args"]
    return args[args.index("--model") + 1]


def test_deploy_rewrites_one_argument_reloads_and_records(stack):
    s = stack()
    before = s.eco.read_text()
    # an app of the same file that ftctl was not told about, already running: it must not notice
    subprocess.run([PM2, "start", str(s.eco), "--only", s.extra["other"]], check=True, capture_output=True)
    other_before = pm2_list(s.pm2_home)[s.extra["other"]]
    out = run_json("deploy", "v1.0", cwd=s.root)
    assert out["stable"] == "v1.0" and out["canary"] is None
    assert get_json(s.stable_url())["data"][0]["id"] == "assistant@v1.0"  # the served version is visible
    stable_pid = pm2_list(s.pm2_home)[s.app]["pid"]

    out = run_json("deploy", "v1.1", cwd=s.root)
    after = s.eco.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines()) and len(changed) == 1
    assert str(s.files["v1.1"]) in changed[0][1] and "assistant@v1.1" in changed[0][1]
    assert app_model_arg(s) == str(s.files["v1.1"])
    assert pm2_list(s.pm2_home)[s.app]["pid"] != stable_pid  # it really restarted
    other = pm2_list(s.pm2_home)[s.extra["other"]]
    assert (other["pid"], other["pm2_env"]["restart_time"]) == (other_before["pid"], other_before["pm2_env"]["restart_time"])
    assert other["pm2_env"]["args"] == other_before["pm2_env"]["args"]

    status = run_json("status", cwd=s.root)
    assert set(status) >= {"model", "stable", "canary", "apps", "history"}
    assert status["stable"] == "v1.1" and status["model"] == "assistant"
    (app,) = status["apps"]
    assert app["name"] == s.app and app["version"] == "v1.1" and app["healthy"] is True
    assert app["model_path"] == str(s.files["v1.1"]) and len(app["sha256"]) == 64
    assert [h["action"] for h in status["history"]] == ["deploy", "deploy"]
    assert status["history"][-1]["user"] and status["history"][-1]["time"]
    human = run_ftctl("status", cwd=s.root)
    assert human.returncode == 0 and "assistant: stable v1.1, no canary" in human.stdout and "history" in human.stdout
    backups = list((s.root / ".ftctl/deploy/backups").iterdir())
    assert before in [b.read_text() for b in backups]


def test_dry_run_prints_the_diff_and_commands_and_changes_nothing(stack):
    s = stack()
    before = s.eco.read_text()
    proc = run_ftctl("deploy", "v1.1", "--dry-run", cwd=s.root)
    assert proc.returncode == 0, proc.stderr
    assert "+      args: " in proc.stdout and str(s.files["v1.1"]) in proc.stdout
    assert "startOrReload" in proc.stdout
    assert s.eco.read_text() == before
    assert pm2_list(s.pm2_home) == {}


def test_rollback_redeploys_previous_and_to_a_named_version(stack):
    s = stack(versions=("v1.0", "v1.1", "v1.2"))
    for v in ("v1.0", "v1.1", "v1.2"):
        run_json("deploy", v, cwd=s.root)
    out = run_json("rollback", cwd=s.root)
    assert out["stable"] == "v1.1" and app_model_arg(s) == str(s.files["v1.1"])
    out = run_json("rollback", "--to", "v1.0", cwd=s.root)
    assert out["stable"] == "v1.0" and out["apps"][0]["healthy"]
    assert [h["action"] for h in out["history"]][-2:] == ["rollback", "rollback"]


def test_unloadable_gguf_is_rolled_back_automatically(stack):
    s = stack(health_timeout=6)
    run_json("deploy", "v1.0", cwd=s.root)
    before = s.eco.read_text()
    s.files["v1.1"].write_bytes(b"GGUF unloadable")  # a GGUF the server fails to load; sha256 re-recorded below
    from tests.deploy.conftest import add_versions

    add_versions(s.ws, "assistant", {"v1.1": s.files["v1.1"]})
    proc = run_ftctl("--json", "deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 6, proc.stderr
    assert "rolled back" in json.loads(proc.stdout)["error"]
    assert s.eco.read_text() == before
    assert get_json(s.stable_url())["data"][0]["id"] == "assistant@v1.0"
    status = run_json("status", cwd=s.root)
    assert status["stable"] == "v1.0" and status["history"][-1]["result"] == "rolled back"


def test_canary_split_of_1000_requests_through_nginx(stack):
    s = stack(with_nginx=True)
    run_json("deploy", "v1.0", cwd=s.root)
    out = run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)
    assert out["canary"] == {"version": "v1.1", "percent": 20, "app": f"{s.app}-canary"}
    assert {a["role"]: a["version"] for a in out["apps"]} == {"stable": "v1.0", "canary": "v1.1"}
    assert all(a["healthy"] for a in out["apps"])
    served = served_ids(s.nginx.url(), 1000)
    # 1,000 independent 20% draws: sd = sqrt(1000 * .2 * .8) = 12.6; +-50 is ~4 sd
    assert set(served) == {"assistant@v1.0", "assistant@v1.1"}
    assert abs(served["assistant@v1.1"] - 200) <= 50, served

    run_json("deploy", "v1.1", "--canary", "50", cwd=s.root)
    served = served_ids(s.nginx.url(), 400)
    assert abs(served["assistant@v1.1"] - 200) <= 40, served  # sd 10

    out = run_json("promote", cwd=s.root)
    assert out["stable"] == "v1.1" and out["canary"] is None
    assert [a["name"] for a in out["apps"]] == [s.app]
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    served = served_ids(s.nginx.url(), 50)
    assert served == {"assistant@v1.1": 50}


def test_rollback_of_a_canary_sends_all_traffic_back(stack):
    s = stack(with_nginx=True)
    run_json("deploy", "v1.0", cwd=s.root)
    run_json("deploy", "v1.1", "--canary", "30", cwd=s.root)
    out = run_json("rollback", cwd=s.root)
    assert out["stable"] == "v1.0" and out["canary"] is None
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    served = served_ids(s.nginx.url(), 50)
    assert served == {"assistant@v1.0": 50}


# --- bad input and faults --------------------------------------------------------------------


def test_rollback_with_no_previous_version(stack):
    s = stack()
    proc = run_ftctl("rollback", cwd=s.root)
    assert proc.returncode == 2 and "no previous version" in proc.stderr and "hint:" in proc.stderr
    run_json("deploy", "v1.0", cwd=s.root)
    proc = run_ftctl("rollback", cwd=s.root)
    assert proc.returncode == 2 and "no previous version" in proc.stderr


def test_missing_gguf_changes_nothing(stack):
    s = stack()
    before = s.eco.read_text()
    s.files["v1.1"].unlink()
    proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "hint:" in proc.stderr
    assert s.eco.read_text() == before and pm2_list(s.pm2_home) == {}


def test_app_not_in_the_ecosystem_file(stack):
    s = stack(app="llama-nobody-1")
    proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 2 and "no app named 'llama-nobody-1'" in proc.stderr
    assert s.app in proc.stderr  # the hint lists the apps that are there


def test_pm2_missing_is_a_clear_error(stack):
    s = stack(pm2="/nonexistent/pm2")
    before = s.eco.read_text()
    proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 1 and "pm2 is not installed" in proc.stderr and "install_system.sh" in proc.stderr
    assert s.eco.read_text() == before


def test_nginx_missing_is_a_clear_error_and_leaves_no_canary(stack):
    s = stack(with_nginx=True)
    run_json("deploy", "v1.0", cwd=s.root)
    # nginx disappears from the reload command's view (the include path stays configured)
    from ruamel.yaml import YAML

    from tests.deploy.conftest import write_yaml

    data = YAML(typ="safe", pure=True).load(s.ws.config_path.read_text())
    data["deploy"]["pm2"]["nginx_reload"] = ["/nonexistent/nginx", "-s", "reload"]
    write_yaml(s.ws.config_path, data)
    proc = run_ftctl("deploy", "v1.1", "--canary", "20", cwd=s.root)
    assert proc.returncode == 1 and "nginx is not installed" in proc.stderr
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    assert run_json("status", cwd=s.root)["canary"] is None


def test_concurrent_deploys_meet_the_run_lock(stack):
    s = stack()
    with s.ws.run_lock("a test holding the lock"):
        proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 4 and "lock" in proc.stderr
    assert pm2_list(s.pm2_home) == {}


def test_kill_9_in_the_middle_of_a_deploy_then_rollback(stack):
    s = stack(delay=3, health_timeout=20)
    run_json("deploy", "v1.0", cwd=s.root)
    before = s.eco.read_text()
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "deploy", "v1.1"], cwd=s.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pending = s.root / ".ftctl/deploy/assistant.pending.json"
    deadline = time.monotonic() + 30
    while s.eco.read_text() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the health wait: pm2 is restarting the app on the new file
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert pending.exists()
    text = s.eco.read_text()
    from ftctl_plugins.deployers.ecosystem import load_apps

    assert text != before and load_apps(s.eco)  # the new file, whole (never a partial one)
    status = run_json("status", cwd=s.root)
    assert status["stable"] == "v1.0" and status["interrupted"] is True

    out = run_json("rollback", cwd=s.root)
    assert s.eco.read_text() == before and not pending.exists()
    assert out["stable"] == "v1.0" and out["apps"][0]["healthy"]
    assert out["history"][-1]["action"] == "recover"
    assert app_model_arg(s) == str(s.files["v1.0"])


def test_the_eval_gate_runs_first_when_configured(stack, monkeypatch):
    from ftctl import verbs as deploy
    from ftctl.eval import gating
    from ftctl.errors import GateFailed

    s = stack(deployer_gate=True)
    calls = []

    def failing_gate(ws, candidate, **kw):  # the gate's own logic is tested in tests/eval
        calls.append(candidate)
        raise GateFailed(f"gate failed for {candidate}", hint="see the report")

    monkeypatch.setattr(gating, "gate", failing_gate)
    before = s.eco.read_text()
    with s.ws.run_lock("test"), pytest.raises(GateFailed):
        deploy.deploy(s.ws, "v1.1", log=lambda m: None)
    assert calls == ["assistant@v1.1"] and s.eco.read_text() == before and pm2_list(s.pm2_home) == {}
    with s.ws.run_lock("test"):
        out = deploy.deploy(s.ws, "v1.1", gate=False, log=lambda m: None)  # --no-gate
    assert out["stable"] == "v1.1" and calls == ["assistant@v1.1"]


def test_two_models_each_with_its_own_app_in_one_file(stack):
    """One model per agent type: each deploy touches its own app's line and its own history."""
    from ruamel.yaml import YAML

    from tests.deploy.conftest import add_versions, write_yaml

    s = stack()
    triage_file = s.root / "exports/triage/v1.0/model.gguf"
    triage_file.parent.mkdir(parents=True)
    triage_file.write_bytes(b"GGUF tiny model triage@v1.0")
    data = YAML(typ="safe", pure=True).load(s.ws.config_path.read_text())
    data["models"]["triage"] = {"deploy": {"pm2": {"app": s.extra["other"], "alias_arg": "--model_alias",
                                                   "canary_port": None}}}
    write_yaml(s.ws.config_path, data)
    add_versions(s.ws, "triage", {"v1.0": triage_file})
    run_json("deploy", "v1.0", cwd=s.root)
    before = s.eco.read_text()
    out = run_json("deploy", "triage@v1.0", cwd=s.root)
    assert out["model"] == "triage" and out["stable"] == "v1.0"
    assert [(a["name"], a["version"], a["healthy"]) for a in out["apps"]] == [(s.extra["other"], "v1.0", True)]
    changed = [(a, b) for a, b in zip(before.splitlines(), s.eco.read_text().splitlines()) if a != b]
    assert len(changed) == 1 and s.extra["other"] in changed[0][0] and str(triage_file) in changed[0][1]
    assert app_model_arg(s) == str(s.files["v1.0"])  # the assistant's app still serves its own file
    assistant = run_json("status", cwd=s.root)
    assert assistant["stable"] == "v1.0" and [h["action"] for h in assistant["history"]] == ["deploy"]
    assert get_json(f"http://127.0.0.1:{s.extra['other_port']}/v1/models")["data"][0]["id"] == "triage@v1.0"
