"""The LLM judge against a real judge: llama.cpp's llama-server (the xllamacpp wheel, started as
tests/deploy/llama_server.py does for the deploy tests) serving SmolLM2-135M-Instruct's GGUF.

A 135M model is a poor judge; what is tested is the plumbing a team relies on with a better one:
the OpenAI route, the rubric, llama.cpp's JSON-schema grammar (every reply readable), the
unjudged count, the pairwise swap and the agreement with human grades."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftctl import plugins
from ftctl.kinds import Context
from ftctl.records import Example

pytestmark = pytest.mark.integration
SERVER = Path(__file__).resolve().parents[1] / "deploy" / "llama_server.py"


@pytest.fixture(scope="module")
def judge_url():
    pytest.importorskip("xllamacpp")
    from ftctl.lib.basemodel import locate

    gguf = locate("smollm2-135m-instruct", Path.cwd())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SERVER), "-m", str(gguf), "--port", str(port), "-c", "2048",
                             "-t", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import requests

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-2000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("llama-server did not become healthy in 120 s")
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ex(prompt, grade):
    return Example(messages=[{"role": "user", "content": prompt}], meta={"grade": grade})


CASES = [("What is the capital of France?", "Paris is the capital of France.", 10),
         ("What is the capital of Japan?", "The capital of Japan is Tokyo.", 10),
         ("What is the capital of Italy?", "The capital of Italy is Madrid.", 1),
         ("What is the capital of Canada?", "Bananas are yellow.", 1)]


def test_a_real_llama_server_judges_with_a_rubric_and_a_json_grammar(judge_url, tmp_path):
    j = plugins.build("evaluator", "llm_judge",
                      {"endpoint": judge_url, "rubric_file": "correctness", "json_schema": True, "human_key": "grade",
                       "retries": 1, "max_tokens": 16, "timeout": 120},
                      Context(tmp_path, "m", tmp_path), key="eval.llm_judge")
    exs = [ex(q, g) for q, _, g in CASES]
    preds = [a for _, a, _ in CASES]
    scores = j.score(preds, [None] * 4, exs)
    assert all(0 <= s <= 1 for s in scores)  # the grammar makes every reply readable: none unjudged
    d = j.details(preds, [None] * 4, exs)
    assert d["judged"] == 4 and d["unjudged"] == 0 and d["agreement"]["n"] == 4
    shares = j.judge_pair(preds[:1], preds[2:3], [None], exs[:1])
    assert len(shares) == 1 and sum(shares[0]) == pytest.approx(1.0)
    print(f"SmolLM2-135M as judge: grades {[round(s * 9 + 1) for s in scores]} vs human {[g for *_, g in CASES]}, "
          f"agreement {d['agreement']}, pair share {shares[0]}")


def test_a_real_judge_without_the_grammar_is_counted_unjudged_not_guessed(judge_url, tmp_path):
    j = plugins.build("evaluator", "llm_judge", {"endpoint": judge_url, "retries": 0, "max_tokens": 32, "timeout": 120},
                      Context(tmp_path, "m", tmp_path), key="eval.llm_judge")
    exs = [ex(q, g) for q, _, g in CASES[1:3]]
    scores = j.score([a for _, a, _ in CASES[1:3]], [None] * 2, exs)
    d = j.details([], [], [])
    assert d["judged"] + d["unjudged"] == 2 and d["unjudged"] == sum(s is None for s in scores)
    print(f"SmolLM2-135M free-form replies: {d['judged']} judged, {d['unjudged']} unjudged")


def test_a_local_gguf_judge_asks_in_parallel_slots_with_the_json_grammar(tmp_path):
    """`gguf:` instead of `endpoint:`: the GGUF backend's own llama-server (in this process) takes
    the same request body, the JSON-schema grammar included; questions asked at once share its
    slots and come back in order."""
    pytest.importorskip("xllamacpp")
    from ftctl.lib.basemodel import locate

    gguf = locate("smollm2-135m-instruct", Path.cwd())
    cfg = {"gguf": str(gguf), "rubric_file": "correctness", "json_schema": True, "human_key": "grade",
           "retries": 1, "max_tokens": 16, "n_ctx": 512}
    many = plugins.build("evaluator", "llm_judge", cfg | {"parallel": 4}, Context(tmp_path, "m", tmp_path),
                         key="eval.llm_judge")
    exs = [ex(q, g) for q, _, g in CASES]
    preds = [a for _, a, _ in CASES]
    scores = many.score(preds, [None] * 4, exs)
    d = many.details(preds, [None] * 4, exs)
    assert d["judged"] == 4 and d["unjudged"] == 0 and all(0 <= s <= 1 for s in scores)
    one = plugins.build("evaluator", "llm_judge", cfg, Context(tmp_path, "m", tmp_path), key="eval.llm_judge")
    assert one.score(preds, [None] * 4, exs) == scores  # greedy: the same grades one question at a time
    shares = many.judge_pair(preds[:2], preds[2:], [None] * 2, exs[:2])
    assert len(shares) == 2 and all(sum(s) == pytest.approx(1.0) for s in shares)
