"""The service's contract as a client sees it: validation errors in the CLI's error shape, and an
OpenAPI schema that declares the bearer scheme so /docs can send the token (issue 25)."""

from __future__ import annotations


def test_validation_errors_have_the_cli_shape(shared):
    _, service = shared
    for body, where in [({"max_steps": 0}, "max_steps"), ({"unknown": 1}, "unknown: unknown field"),
                        ({"model": "../x"}, "model"), ({"kind": "export"}, "kind")]:
        r = service.http.post("/finetune/start", json=body)
        assert r.status_code == 422, body
        doc = r.json()
        assert set(doc) == {"error", "hint", "exit_code"} and doc["exit_code"] == 2, doc
        assert doc["error"].startswith("invalid request: ") and where in doc["error"], doc
    r = service.http.get("/jobs", params={"limit": "lots"})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request: query.limit"), r.json()
    r = service.http.post("/finetune/start", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and set(r.json()) == {"error", "hint", "exit_code"}


def test_openapi_declares_the_bearer_scheme(shared):
    _, service = shared
    schema = service.http.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    name, scheme = next(iter(schemes.items()))
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, op in [("/finetune/start", "post"), ("/evaluate", "post"), ("/deploy", "post"),
                     ("/jobs/{job_id}/cancel", "post")]:
        assert schema["paths"][path][op]["security"] == [{name: []}], path
    assert "security" not in schema["paths"]["/versions"]["get"]  # reads need no token
