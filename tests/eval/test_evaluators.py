"""Evaluator plugins: known scores, skipped references, groundedness, and the LLM judge over HTTP."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ftctl import plugins
from ftctl.errors import ConfigError
from ftctl.kinds import Context
from ftctl.records import Example
from ftctl_plugins.evaluators.judge import JudgeError


def build(name, tmp_path, **cfg):
    return plugins.build("evaluator", name, cfg, Context(tmp_path, "m", tmp_path), key=f"eval.{name}")


def ex(prompt="q?", meta=None):
    return Example(messages=[{"role": "user", "content": prompt}], meta=meta or {})


def test_builtins_are_registered_through_the_entry_point():
    names = {n for k, n in plugins.registry() if k == "evaluator"}
    assert {"exact_match", "token_f1", "bleu", "rougeL", "perplexity", "llm_judge", "groundedness"} <= names


def test_lexical_metrics_known_values(tmp_path):
    preds = ["The Cat sat.", "the cat sat", "dogs run", "anything"]
    refs = ["cat sat", "cat sat down", "cats walk", None]
    exs = [ex()] * 4
    assert build("exact_match", tmp_path).score(preds, refs, exs) == [1.0, 0.0, 0.0, None]
    f1 = build("token_f1", tmp_path).score(preds, refs, exs)
    assert f1[:3] == [1.0, pytest.approx(0.8), 0.0] and f1[3] is None
    bleu = build("bleu", tmp_path).score(["a b c d e", "x y"], ["a b c d e", "a b c d"], exs[:2])
    assert bleu[0] == pytest.approx(100.0) and bleu[1] == pytest.approx(0.0)
    rouge = build("rougeL", tmp_path).score(["the cat sat on the mat", "zzz"], ["the cat sat on the mat", "a b"], exs[:2])
    assert rouge == [pytest.approx(1.0), 0.0]


def test_plugin_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="eval.bleu.nope"):
        build("bleu", tmp_path, nope=1)
    with pytest.raises(ConfigError, match="exactly one"):
        build("llm_judge", tmp_path)


def test_groundedness_counts_unsupported_claims(tmp_path):
    g = build("groundedness", tmp_path)
    source = "The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair."
    exs = [ex(meta={"source_text": source})] * 3 + [ex()]
    preds = ["The Eiffel Tower is in Paris. It was completed in 1889.",
             "The Eiffel Tower is in Paris. It is painted bright green every Tuesday.",
             "Sure!", "no source here"]
    assert g.score(preds, [None] * 4, exs) == [1.0, 0.5, 1.0, None]


class Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose behaviour the test chooses (mode on the server)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls.append(self.headers.get("Authorization"))
        prompt = body["messages"][-1]["content"]
        mode = self.server.mode
        if mode == "broken":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"not json")
            return
        if mode == "garbage":
            reply = "I think both are fine."
        elif "WINNER" in prompt:
            a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", prompt, re.S).group(1)
            b = re.search(r"\[Answer B\]\n(.*?)\n\nWhich", prompt, re.S).group(1)
            reply = "WINNER: A" if mode == "first" else f"WINNER: {'A' if len(a) > len(b) else 'B'}"
        else:
            reply = "Reasoning... SCORE: 7"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    server.mode, server.calls = "longer", []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def endpoint(server):
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_judge_pointwise_and_key_from_env(judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "s3cret")
    j = build("llm_judge", tmp_path, endpoint=endpoint(judge_server), api_key_env="JUDGE_KEY")
    assert j.score(["an answer"], [None], [ex()]) == [pytest.approx(6 / 9)]
    assert judge_server.calls == ["Bearer s3cret"]


def test_judge_pairwise_swaps_positions(judge_server, tmp_path):
    j = build("llm_judge", tmp_path, endpoint=endpoint(judge_server))
    # a judge that prefers the longer answer is consistent across both orders
    assert j.judge_pair(["short", "a much longer answer"], ["a much longer answer", "tiny"], [None, None],
                      [ex(), ex()]) == [(0.0, 1.0), (1.0, 0.0)]
    # a judge that always picks the first slot: the swap turns its bias into a tie
    judge_server.mode = "first"
    assert j.judge_pair(["x"], ["yyyy"], [None], [ex()]) == [(0.5, 0.5)]


def test_judge_garbage_is_retried_then_unjudged_and_counted(judge_server, tmp_path):
    judge_server.mode = "garbage"
    j = build("llm_judge", tmp_path, endpoint=endpoint(judge_server), retries=2)
    assert j.score(["a", "b"], [None, None], [ex(), ex()]) == [None, None]
    assert len(judge_server.calls) == 6  # 3 asks per example, no more
    assert j.details(["a", "b"], [None, None], [ex(), ex()]) == {"judged": 0, "unjudged": 2}
    assert j.judge_pair(["a"], ["b"], [None], [ex()]) == [(None, None)]


def test_judge_broken_endpoint_is_retried_then_a_clear_error(judge_server, tmp_path):
    judge_server.mode = "broken"  # HTTP 200 with a body that is not the API's JSON
    j = build("llm_judge", tmp_path, endpoint=endpoint(judge_server), retries=2)
    with pytest.raises(JudgeError, match="failed after 3 attempts") as e:
        j.score(["a"], [None], [ex()])
    assert e.value.hint and len(judge_server.calls) == 3


def test_judge_rubric_files_and_agreement_with_human_grades(judge_server, tmp_path):
    j = build("llm_judge", tmp_path, endpoint=endpoint(judge_server), rubric_file="correctness", human_key="grade")
    assert "CORRECTNESS" in j.rubric
    (tmp_path / "tone.md").write_text("Judge the TONE.")
    assert build("llm_judge", tmp_path, endpoint=endpoint(judge_server), rubric_file="tone.md").rubric == "Judge the TONE."
    with pytest.raises(ConfigError, match="no such rubric") as e:
        build("llm_judge", tmp_path, endpoint=endpoint(judge_server), rubric_file="nope")
    assert "completeness, correctness, relevance" in e.value.hint
    from ftctl_plugins.evaluators.judge import agreement

    same = agreement([2, 5, 7, 9], [1, 5, 8, 9])
    assert same["spearman"] == 1.0 and 0.9 < same["kappa"] <= 1 and same["n"] == 4
    assert agreement([9, 2, 5, 7], [1, 9, 5, 3])["spearman"] == -1.0
    assert agreement([7, 7, 7], [1, 5, 9])["kappa"] is None  # a judge that always says 7 agrees with nothing



def test_judge_down_is_a_clear_error(tmp_path):
    j = build("llm_judge", tmp_path, endpoint="http://127.0.0.1:9/v1", retries=1, timeout=2)
    with pytest.raises(JudgeError, match="ConnectionError"):
        j.score(["a"], [None], [ex()])


def test_classification_per_label_figures_and_unparsed_answers(tmp_path):
    c = build("classification", tmp_path, labels=["approve", "deny", "refer"])
    refs = ["Decision: approve", "deny", "DENY the claim", "approve", "refer to an expert", "approve", None]
    preds = ["I approve this claim.", "approve", "Deny.", "no idea", "refer", "deny", "approve"]
    exs = [ex()] * len(preds)
    # "no idea" has no label: unparsed, not wrong; the last example has no expert label
    assert c.score(preds, refs, exs) == [1.0, 0.0, 1.0, None, 1.0, 0.0, None]
    d = c.details(preds, refs, exs)
    assert (d["scored"], d["unparsed"], d["no_expert_label"]) == (5, 1, 1)
    assert d["confusion"]["deny"] == {"approve": 1, "deny": 1, "refer": 0}
    assert d["confusion"]["approve"] == {"approve": 1, "deny": 1, "refer": 0}
    approve = d["per_label"]["approve"]  # predicted approve twice, right once; the expert said approve twice
    assert approve["precision"] == 0.5 and approve["recall"] == 0.5 and approve["support"] == 2
    assert approve["fpr"] == pytest.approx(1 / 3) and approve["fnr"] == 0.5
    sub = c.breakdown(preds, refs, exs)
    assert sub["recall[deny]"] == [None, 0.0, 1.0, None, None, None, None]
    assert sub["specificity[approve]"] == [None, 0.0, 1.0, None, 1.0, None, None]


def test_classification_pattern_and_expert_label_from_meta(tmp_path):
    c = build("classification", tmp_path, pattern=r"CODE:\s*([A-Z]\d{2})", reference_key="icd", ignore_case=False)
    exs = [ex(meta={"icd": "J45"}), ex(meta={"icd": "E11"}), ex(meta={})]
    assert c.score(["CODE: J45", "code: e11", "CODE: J45"], [None] * 3, exs) == [1.0, None, None]
    assert c.details(["CODE: J45", "code: e11", "CODE: J45"], [None] * 3, exs)["unparsed"] == 1


def test_classification_bad_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="labels"):
        build("classification", tmp_path)
    with pytest.raises(ConfigError, match="not a valid regex"):
        build("classification", tmp_path, pattern="(unclosed")


def test_groundedness_needs_support_in_one_passage_with_the_same_numbers(tmp_path):
    g = build("groundedness", tmp_path)
    source = ("Claims above 5000 euros need a second reviewer. The reviewer signs within 10 days. "
              "Water damage is covered when the pipe burst suddenly. Flood damage is not covered. "
              "Our office in Lyon handles appeals. Appeals are answered by letter.")
    exs = [ex(meta={"context": source})] * 5
    preds = ["Claims above 5000 euros need a second reviewer.",       # supported
             "Claims above 9000 euros need a second reviewer.",       # a number the source does not say
             "Flood damage is covered.",                              # the source says it is not
             "Water damage is covered when the pipe burst suddenly. The reviewer is called Martin.",
             "Appeals are handled in Lyon by letter within 10 days."]  # words scattered over the document
    assert g.score(preds, [None] * 5, exs) == [1.0, 0.0, 0.0, 0.5, 0.0]


def test_groundedness_sources_folder_is_searched_and_a_missing_one_is_a_config_error(tmp_path):
    docs = tmp_path / "policy"
    docs.mkdir()
    (docs / "travel.md").write_text("Lost luggage is refunded up to 800 euros. Delays over 6 hours give a voucher.")
    (docs / "home.txt").write_text("Storm damage to roofs is covered. Garden furniture is excluded.")
    g = build("groundedness", tmp_path, sources_dir="policy")  # relative to the workspace
    preds = ["Storm damage to roofs is covered.", "Lost luggage is refunded up to 2000 euros.", "Sure!"]
    assert g.score(preds, [None] * 3, [ex()] * 3) == [1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="not a folder"):
        build("groundedness", tmp_path, sources_dir="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .txt or .md"):
        build("groundedness", tmp_path, sources_dir="empty")
