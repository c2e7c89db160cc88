"""The API over a real uvicorn: job lifecycle, the CLI's JSON, auth, validation, the lock."""

from __future__ import annotations

import json

import pytest

from tests.conftest import hold_run_lock, run_ftctl
from tests.serve.conftest import Service, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_job_lifecycle_reads_match_the_cli_and_the_cli_is_locked_out(shared):
    ws, service = shared
    r = service.http.post("/finetune/start", json={"kind": "train", "max_steps": 4})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["command"] == ["ftctl", "train", "--max-steps", "4"]
    # while the API job holds the run lock, the CLI is refused (exit 4) and the job is untouched
    assert wait_for(lambda: (ws.state_dir / "run.lock.json").is_file(), 120)
    cli = run_ftctl("--json", "train", "--max-steps", "2", cwd=ws.root)
    assert cli.returncode == 4 and "holds the workspace lock: `train`" in json.loads(cli.stdout)["error"]
    done = service.wait_job(job["id"])
    assert done["state"] == "done", done["log_tail"]
    assert done["exit_code"] == 0 and done["result"]["version"] == "v1.0"
    assert done["progress"]["total"] == 4 and done["progress"]["step"] == 4 and done["progress"]["loss"] > 0
    assert any("trained assistant@v1.0" in line for line in done["log_tail"])
    assert set(ws.read_lock().state("assistant").versions) == {"v1.0"}

    # every read is byte for byte what `ftctl --json` prints
    for route, argv in (("/versions", ["versions"]), ("/versions/v1.0", ["show", "v1.0"]),
                        ("/versions/latest", ["show", "latest"])):
        api = service.http.get(route)
        cli = run_ftctl("--json", *argv, cwd=ws.root)
        assert api.status_code == 200 and api.text == cli.stdout.rstrip("\n"), route

    metrics = service.http.get("/metrics").text
    assert 'ftctl_versions{model="assistant"} 1.0' in metrics
    assert 'ftctl_version_metric{metric="train_loss",model="assistant",ref="latest",version="v1.0"}' in metrics
    assert 'ftctl_job_duration_seconds_count{kind="train"} 1.0' in metrics
    assert "ftctl_jobs_queued 0.0" in metrics

    assert job["id"] in [j["id"] for j in service.http.get("/jobs").json()]
    assert service.http.get("/openapi.json").json()["paths"]["/finetune/start"]


def test_a_job_is_refused_while_the_cli_holds_the_lock(shared):
    ws, service = shared
    holder = hold_run_lock(ws.root, 60)
    try:
        job = service.http.post("/finetune/start", json={"max_steps": 2}).json()
        failed = service.wait_job(job["id"])
        assert failed["state"] == "failed" and failed["exit_code"] == 4
        assert "holds the workspace lock" in failed["result"]["error"]  # the CLI's message
        r = service.http.post("/promote", json={})  # a synchronous verb: 409 with the CLI's JSON
        assert r.status_code == 409 and r.json()["exit_code"] == 4
    finally:
        holder.kill()
        holder.wait()


def test_mutating_routes_need_the_token(shared):
    _, service = shared
    before = len(service.http.get("/jobs").json())
    import httpx

    anon = httpx.Client(base_url=service.url, timeout=10)
    for route, body in (("/finetune/start", {}), ("/evaluate", {}), ("/deploy", {"ref": "v1.0"}),
                        ("/promote", {}), ("/rollback", {})):
        r = anon.post(route, json=body)
        assert r.status_code == 401, route
        assert r.json()["error"] == "missing or wrong bearer token" and r.headers["www-authenticate"] == "Bearer"
    wrong = anon.post("/finetune/start", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert anon.get("/versions").status_code == 200  # reads stay open
    assert len(service.http.get("/jobs").json()) == before  # nothing was queued
    anon.close()


def test_bad_refs_get_the_cli_message_with_422_or_404(shared):
    """A malformed ref (or one naming nothing deployed) is 422; a version or model that does not
    exist is 404 (issue 25); both with the CLI's JSON error."""
    serve_ws, service = shared
    before = len(service.http.get("/jobs").json())
    for ref, status in (("v1.x", 422), ("../../etc", 404), ("v9.9", 404), ("stable", 422), ("other@v1.0", 404)):
        cli = run_ftctl("--json", "show", ref, cwd=serve_ws.root)
        assert cli.returncode == 2
        expected = json.loads(cli.stdout)
        api = service.http.get(f"/versions/{ref}")
        if "/" in ref:  # not even a route: a path never reaches the core
            assert api.status_code == 404
            continue
        assert api.status_code == status and api.json() == expected, ref
        r = service.http.post("/evaluate", json={"a": "base", "b": ref})
        assert r.status_code == status and r.json()["error"] == expected["error"]
    assert service.http.get("/jobs/deadbeef").status_code == 404
    assert service.http.get("/reports/nosuchmodel").status_code == 404
    r = service.http.post("/finetune/start", json={"from": "v1.x"})
    assert r.status_code == 422 and r.json()["error"] == "invalid version 'v1.x'"
    assert len(service.http.get("/jobs").json()) == before


def test_inputs_are_validated_and_bounded(shared):
    _, service = shared
    before = len(service.http.get("/jobs").json())
    bad = [{"kind": "export"}, {"max_steps": 0}, {"kind": "cycle", "resume": True},
           {"set": ["eval.batch_size=-1"]}, {"set": ["base=/etc/passwd"]},
           {"set": ["curate.golden=x.jsonl"]}, {"set": ["train.lora.r=${FTCTL_SERVE_TOKEN}"]},
           {"set": ["train.lora.r=1"] * 33}, {"unknown": 1}, {"model": "../x"}]
    for body in bad:
        assert service.http.post("/finetune/start", json=body).status_code == 422, body
    huge = service.http.post("/finetune/start", content=b"{" + b" " * 100_000 + b"}",
                             headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert service.http.get("/reports/assistant/..%2Fmodels.lock").status_code in (404, 422)
    assert service.http.get("/reports/assistant/ftctl.yaml").status_code == 404  # not a listed report
    assert len(service.http.get("/jobs").json()) == before
    # no CORS: a browser on another origin gets no permission to read
    r = service.http.options("/versions", headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    # loopback service: another Host (DNS rebinding) is refused
    assert service.http.get("/versions", headers={"Host": "evil.example"}).status_code == 400


def test_refuses_a_public_address_without_a_token(workspace):
    serve_ws = workspace
    proc = run_ftctl("--json", "serve", "--host", "0.0.0.0", "--port", "1", cwd=serve_ws.root,
                     env={"FTCTL_SERVE_TOKEN": ""})
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "refusing to listen on 0.0.0.0 without a token"


def test_without_a_token_the_service_is_read_only(workspace):
    serve_ws = workspace
    svc = Service(serve_ws.root, token=None)
    try:
        r = svc.http.post("/finetune/start", json={})
        assert r.status_code == 401 and "no token" in r.json()["error"]
        assert svc.http.get("/health").json()["status"] in ("ok", "degraded")
    finally:
        svc.stop()


def test_doctor_checks_the_configured_service(shared):
    ws, service = shared
    proc = run_ftctl("--json", "--set", f"serve.url={service.url}", "doctor", cwd=ws.root)
    check = next(c for c in json.loads(proc.stdout) if c["name"] == "ftctl serve")
    assert check["ok"] is True and check["detail"].startswith(service.url)


def test_evaluate_sources_are_written_by_content_and_passed_as_a_folder(tmp_path):
    """POST /evaluate's inline source documents: file names only (no path), written under the
    workspace cache by content hash, handed to the job as `--sources`."""
    from pydantic import ValidationError

    from ftctl.serve.requests import EvaluateRequest

    req = EvaluateRequest.model_validate({"a": "base", "b": "v1.0", "sources": {"policy.md": "Floods are not covered."}})
    req.write_sources(tmp_path)
    argv = req.argv()
    folder = tmp_path / "sources" / argv[argv.index("--sources") + 1].rsplit("/", 1)[-1]
    assert argv[argv.index("--sources") + 1] == str(folder)
    assert (folder / "policy.md.txt").read_text() == "Floods are not covered."
    assert "_sources_dir" not in req.model_dump()  # the client cannot name the folder
    for bad in ({"../x": "t"}, {"a/b": "t"}, {"ok": ""}, {"ok": "x" * 70_000}):
        with pytest.raises(ValidationError):
            EvaluateRequest.model_validate({"sources": bad})
    assert "--sources" not in EvaluateRequest().argv()
