"""PHI nowhere raw through the service (issue 20): overrides on an allow-list, reads of
examples behind the token (a browser carries it as a session cookie), reports only as the
regular files they are, and comparisons stored before results were scrubbed shown without their
examples. Over a real uvicorn, with a real HTTP client."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from ftctl.serve import jobs as J
from ftctl.serve.requests import refusal
from tests.serve.conftest import TOKEN

pytestmark = pytest.mark.integration

SSN, EMAIL = "536-22-8890", "jane.roe@example.com"


@pytest.mark.parametrize("override, named", [
    ("curate.scrub.enabled=false", "curate.scrub.enabled"),
    ("models.assistant.curate.scrub.types=[EMAIL]", "models.assistant.curate.scrub.types"),
    ("curate.scrub.recognizers=x", "curate.scrub.recognizers"),
    ("eval.llm_judge.api_key_env=FTCTL_SERVE_TOKEN", "eval.llm_judge.api_key_env"),
    ("train.lora.token_env=HOME", "train.lora.token_env"),
    ("serve.token_env=HOME", "serve.token_env"),
    ("eval.gate.min_improvement=-1", "eval.gate.min_improvement"),
    ("eval.gate.max.phi_in_output=100", "eval.gate.max.phi_in_output"),
    ("deploy.gate=false", "deploy.gate"),
    ("curate.min_rating=1", "curate.min_rating"),
    ("eval.eval_set=golden", "eval.eval_set"),
    ("train.lora.chat_template=x", "train.lora.chat_template"),
    ("cycle.min_new_examples=1", "cycle.min_new_examples"),
])
def test_overrides_off_the_allow_list_are_refused_naming_the_key(shared, override, named):
    _, service = shared
    before = len(service.http.get("/jobs").json())
    for route in ("/finetune/start", "/evaluate"):
        r = service.http.post(route, json={"set": ["train.lora.r=8", override]})
        assert r.status_code == 422, (route, r.text)
        body = r.json()
        assert f"override of {named} refused" in body["error"] and body["exit_code"] == 2, body
    assert len(service.http.get("/jobs").json()) == before


def test_the_allow_list_takes_training_and_eval_settings():
    for key in ("train.lora.r", "train.lora.learning_rate", "train.dpo.beta", "train.trainer",
                "models.assistant.train.lora.epochs", "eval.max_new_tokens", "eval.metrics", "eval.bootstrap"):
        assert refusal(key) is None, key
    assert "scrubbing" in refusal("curate.scrub.names") and "environment" in refusal("eval.x.key_env")
    assert "gate" in refusal("models.assistant.eval.gate.metric")


def test_a_request_may_not_skip_the_gate(shared):
    _, service = shared
    r = service.http.post("/deploy", json={"ref": "v1.0", "gate": False})
    assert r.status_code == 422 and "gate" in r.json()["error"]


def test_reads_of_examples_need_the_token_and_a_browser_logs_in(shared):
    ws, service = shared
    job = service.http.get("/jobs").json()
    anon = httpx.Client(base_url=service.url, timeout=10, follow_redirects=False)
    try:
        for route in ("/jobs", "/jobs/abc", "/finetune/status/abc", "/reports/assistant",
                      "/reports/assistant/x.html"):
            r = anon.get(route)
            assert r.status_code == 401, route
            assert "needs the token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
        for route in ("/", "/ui/jobs", "/ui/jobs/abc", "/ui/versions/latest"):
            r = anon.get(route)
            assert r.status_code == 401 and 'name="token"' in r.text, route  # the login form, not data
        for route in ("/health", "/metrics", "/versions"):
            assert anon.get(route).status_code in (200, 503), route

        bad = anon.post("/ui/login", data={"token": "nope", "next": "/ui/jobs"})
        assert bad.status_code == 401 and "wrong token" in bad.text and "ftctl_session" not in bad.headers.get(
            "set-cookie", "")
        ok = anon.post("/ui/login", data={"token": TOKEN, "next": "/ui/jobs"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/jobs"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert TOKEN not in cookie  # the cookie holds a value derived from the token
        assert anon.get("/ui/jobs").status_code == 200 and anon.get("/jobs").json() == job
        # a session cookie never authorises a mutation (no cross-site request can start a job)
        assert anon.post("/finetune/start", json={}).status_code == 401
        # the form never sends the browser off the service
        assert anon.post("/ui/login", data={"token": TOKEN, "next": "//evil.example/"}).headers["location"] == "/"
        anon.post("/ui/logout")
        anon.cookies.clear()
        assert anon.get("/ui/jobs").status_code == 401
    finally:
        anon.close()


def test_reports_are_served_only_as_regular_files_inside_the_folder(shared):
    ws, service = shared
    d = ws.reports_dir("assistant")
    d.mkdir(parents=True, exist_ok=True)
    (d / "eval-v9.html").write_text("<p>a report</p>")
    (d / "leak.html").symlink_to(ws.lock_path)  # a symlink to a file in the workspace
    (d / "passwd.json").symlink_to("/etc/passwd")
    (d / "sub").mkdir(exist_ok=True)
    try:
        listed = {r["name"] for r in service.http.get("/reports/assistant").json()["reports"]}
        assert listed == {"eval-v9.html"}
        ok = service.http.get("/reports/assistant/eval-v9.html")
        assert ok.status_code == 200 and ok.text == "<p>a report</p>" and ok.headers["content-type"].startswith("text/html")
        for name in ("leak.html", "passwd.json", "sub"):
            r = service.http.get(f"/reports/assistant/{name}")
            assert r.status_code == 404 and "root:" not in r.text and "models" not in r.text, name
    finally:
        for name in ("leak.html", "passwd.json", "eval-v9.html"):
            (d / name).unlink()
        (d / "sub").rmdir()

    # a reports folder that is itself a symlink serves nothing
    elsewhere = ws.root.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "secret.html").write_text("not a report")
    aside = d.with_name("assistant.aside")
    d.rename(aside)
    d.symlink_to(elsewhere, target_is_directory=True)
    try:
        assert service.http.get("/reports/assistant").json()["reports"] == []
        assert service.http.get("/reports/assistant/secret.html").status_code == 404  # not a listed report (issue 25: 404)
    finally:
        d.unlink()
        aside.rename(d)


def test_a_comparison_stored_raw_before_the_fix_is_shown_without_its_examples(shared):
    ws, service = shared
    store = J.JobStore(ws.root / ".ftctl" / "serve" / "jobs.sqlite")
    job = store.add("evaluate", {}, ["eval", "--compare", "base", "latest"], state=J.DONE)
    raw = {"a": "base", "b": "v1.0", "metrics": {}, "changed": [
        {"id": EMAIL, "prompt": f"my SSN is {SSN}", "reference": "x", "a": "y", "b": "z"}]}
    store.update(job["id"], result=raw, exit_code=0, finished=1.0)
    for route in (f"/jobs/{job['id']}", "/jobs", f"/ui/jobs/{job['id']}"):
        text = service.http.get(route).text
        assert SSN not in text and EMAIL not in text, route
    shown = service.http.get(f"/jobs/{job['id']}").json()["result"]
    assert shown["changed"] == [] and shown["changed_withheld"] == 1
    assert os.path.exists(store.path)


def test_raw_results_an_older_ftctl_stored_are_rewritten_when_the_service_starts(workspace):
    from tests.serve.conftest import Service

    store = J.JobStore(workspace.root / ".ftctl" / "serve" / "jobs.sqlite")
    job = store.add("evaluate", {}, ["eval", "--compare", "base", "latest"], state=J.DONE)
    raw = {"a": "base", "b": "v1.0", "metrics": {}, "changed": [
        {"id": EMAIL, "prompt": f"my SSN is {SSN}", "reference": "x", "a": "y", "b": "z"}]}
    store.update(job["id"], result=raw, exit_code=0, finished=1.0)
    store.out_path(job["id"]).parent.mkdir(parents=True, exist_ok=True)
    store.out_path(job["id"]).write_text(json.dumps(raw))
    kept = store.add("train", {}, ["train"], state=J.DONE)
    store.update(kept["id"], result={"version": "v1.0"}, exit_code=0, finished=1.0)
    svc = Service(workspace.root)
    try:
        serve_dir = workspace.root / ".ftctl" / "serve"
        for f in serve_dir.rglob("*"):
            if f.is_file():
                assert SSN.encode() not in f.read_bytes() and EMAIL.encode() not in f.read_bytes(), f
        assert svc.http.get(f"/jobs/{job['id']}").json()["result"]["changed_withheld"] == 1
        assert svc.http.get(f"/jobs/{kept['id']}").json()["result"] == {"version": "v1.0"}
    finally:
        svc.stop()

