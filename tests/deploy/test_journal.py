"""Journals that cannot hurt (issue 21): a refused command leaves no pending note, a note never
keeps (or puts back) a configuration that does not load, and models.lock records a change
before its note goes, so a kill at any step ends, after the next command, in a recorded state
that serves. Real pm2 and nginx; the kills are FTCTL_KILL_AT (ftctl.deploy.rollout._fault)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_ftctl, run_json
from tests.deploy.conftest import pm2_list, served_ids

pytestmark = pytest.mark.integration

PENDING = ".ftctl/deploy/assistant.pending.json"


def killed_at(s, step: str, *args: str) -> None:
    proc = run_ftctl(*args, cwd=s.root, env={"FTCTL_KILL_AT": step})
    assert proc.returncode == -9, (step, args, proc.returncode, proc.stderr[-2000:])


def assert_recorded_and_serving(s) -> dict:
    """What models.lock records is what serves: versions, health, ids, the split; no note."""
    from ftctl_plugins.deployers.ecosystem import load_apps

    st = run_json("status", cwd=s.root)
    assert not st["interrupted"] and not (s.root / PENDING).exists()
    load_apps(s.eco)  # the team's file loads
    roles = {a["role"]: a for a in st["apps"]}
    assert roles["stable"]["version"] == st["stable"] and roles["stable"]["healthy"], st["apps"]
    assert roles["stable"]["served_id"] == f"assistant@{st['stable']}"
    procs = pm2_list(s.pm2_home)
    if st["canary"]:
        c = st["canary"]["version"]
        assert roles["canary"]["version"] == c and roles["canary"]["healthy"]
        want = {f"assistant@{st['stable']}", f"assistant@{c}"}
    else:
        assert "canary" not in roles and f"{s.app}-canary" not in procs
        want = {f"assistant@{st['stable']}"}
    if s.nginx:
        assert set(served_ids(s.nginx.url(), 40)) == want
    return st


# --- refused commands leave nothing behind -----------------------------------------------------


def test_a_broken_ecosystem_file_is_refused_without_a_note_and_the_fix_is_kept(stack):
    s = stack()
    run_json("deploy", "v1.0", cwd=s.root)
    good = s.eco.read_text()
    broken = good.replace("module.exports = {", "module.exports = {{", 1)
    s.eco.write_text(broken)
    for args in (["deploy", "v1.1"], ["rollback", "--to", "v1.0"], ["deploy", "v1.1", "--canary", "20"]):
        proc = run_ftctl(*args, cwd=s.root)
        assert proc.returncode == 2 and "does not parse" in proc.stderr, (args, proc.stderr)
        assert not (s.root / PENDING).exists() and s.eco.read_text() == broken
    s.eco.write_text(good)  # the user repairs it
    assert run_json("status", cwd=s.root)["interrupted"] is False
    out = run_json("deploy", "v1.1", cwd=s.root)
    assert out["stable"] == "v1.1" and s.eco.read_text() != broken
    assert_recorded_and_serving(s)


def test_a_note_holding_broken_text_is_never_written_back(stack):
    """A note an older ftctl left (its snapshot the broken file): after the user's fix, neither
    `rollback` nor `deploy` writes the broken text back or reloads pm2 on it."""
    s = stack()
    run_json("deploy", "v1.0", cwd=s.root)
    good = s.eco.read_text()
    broken = good.replace("module.exports = {", "module.exports = {{", 1)
    (s.root / PENDING).write_text(json.dumps({"action": "deploy", "version": "v1.1", "snapshot": broken}))
    pid = pm2_list(s.pm2_home)[s.app]["pid"]
    proc = run_ftctl("rollback", cwd=s.root)
    assert proc.returncode == 0, proc.stderr
    assert "snapshot is not put back" in proc.stdout + proc.stderr
    assert s.eco.read_text() == good and not (s.root / PENDING).exists()
    assert pm2_list(s.pm2_home)[s.app]["pid"] == pid  # no reload on anything
    assert run_json("status", cwd=s.root)["history"][-1]["action"] == "recover"
    (s.root / PENDING).write_text(json.dumps({"action": "deploy", "version": "v1.1", "snapshot": broken}))
    out = run_json("deploy", "v1.1", cwd=s.root)
    assert out["stable"] == "v1.1" and "{{" not in s.eco.read_text()
    assert_recorded_and_serving(s)


def test_a_bad_app_name_or_missing_file_leaves_no_note(stack):
    s = stack()
    run_json("deploy", "v1.0", cwd=s.root)
    s.files["v1.1"].unlink()
    proc = run_ftctl("deploy", "v1.1", cwd=s.root)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not (s.root / PENDING).exists()
    from ruamel.yaml import YAML

    from tests.deploy.conftest import write_yaml

    data = YAML(typ="safe", pure=True).load(s.ws.config_path.read_text())
    data["deploy"]["pm2"]["app"] = "llama-nobody"
    write_yaml(s.ws.config_path, data)
    proc = run_ftctl("rollback", "--to", "v1.0", cwd=s.root)
    assert proc.returncode == 2 and "no app named 'llama-nobody'" in proc.stderr
    assert not (s.root / PENDING).exists()


# --- a kill at every step ----------------------------------------------------------------------


STEPS = ("noted", "changed", "recorded")


def test_a_kill_at_each_step_of_deploy(stack):
    s = stack()
    run_json("deploy", "v1.0", cwd=s.root)
    for step in STEPS:
        killed_at(s, step, "deploy", "v1.1")
        run_json("rollback", cwd=s.root)
        st = assert_recorded_and_serving(s)
        # before the record the change is undone; once recorded it stands
        assert st["stable"] == ("v1.1" if step == "recorded" else "v1.0"), step
        if st["stable"] == "v1.1":
            run_json("rollback", cwd=s.root)


def test_a_kill_at_each_step_of_canary_promote_and_rollback(stack):
    s = stack(with_nginx=True)
    run_json("deploy", "v1.0", cwd=s.root)
    for step in STEPS:  # starting a canary
        killed_at(s, step, "deploy", "v1.1", "--canary", "20")
        run_json("status", cwd=s.root)  # reading changes nothing ...
        run_json("rollback", cwd=s.root)  # ... the next command recovers
        st = assert_recorded_and_serving(s)
        assert (st["canary"] or {}).get("version") == ("v1.1" if step == "recorded" else None), step
        if st["canary"]:
            run_json("rollback", cwd=s.root)
            assert_recorded_and_serving(s)

    for step in (*STEPS, "handoff"):  # promoting it
        run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)
        killed_at(s, step, "promote")
        # the next command (here another canary step) recovers first
        proc = run_ftctl("--json", "deploy", "v1.1", "--canary", "30", cwd=s.root)
        st = assert_recorded_and_serving(s)
        if step == "recorded":
            assert st["stable"] == "v1.1" and st["canary"] is None  # promoted already
            assert proc.returncode != 0 and "already the stable version" in proc.stderr
            run_json("rollback", cwd=s.root)
        else:
            assert proc.returncode == 0 and st["stable"] == "v1.0" and st["canary"]["percent"] == 30, step
            run_json("rollback", cwd=s.root)
        assert_recorded_and_serving(s)

    run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)
    for step in STEPS:  # rolling the canary back
        killed_at(s, step, "rollback")
        run_json("rollback", cwd=s.root)  # recovers (undone), or finishes (recorded)
        st = assert_recorded_and_serving(s)
        if step == "recorded":
            assert st["canary"] is None
        else:
            assert st["canary"] == {"version": "v1.1", "percent": 20, "app": f"{s.app}-canary"}
            assert run_json("rollback", cwd=s.root)["canary"] is None
            assert_recorded_and_serving(s)
        run_json("deploy", "v1.1", "--canary", "20", cwd=s.root)

    run_json("rollback", cwd=s.root)
    run_json("deploy", "v1.1", cwd=s.root)
    for step in (*STEPS, "handoff"):  # rolling stable back (a hand-off through the canary port)
        killed_at(s, step, "rollback", "--to", "v1.0")
        run_json("rollback", cwd=s.root)
        st = assert_recorded_and_serving(s)
        if st["stable"] == "v1.0":
            run_json("deploy", "v1.1", cwd=s.root)
    history = run_json("status", cwd=s.root)["history"]
    assert all(h.get("result") in ("ok", "rolled back") for h in history)
