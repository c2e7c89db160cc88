"""PHI nowhere raw through the service (issue 20): overrides on an allow-list. Over a real
uvicorn, with a real HTTP client."""

from __future__ import annotations

import pytest

from ftctl.serve.requests import refusal

pytestmark = pytest.mark.integration


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

