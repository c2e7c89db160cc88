"""`ftctl eval` on a real workspace with a tiny model: results, reports, the lock, bad input, the gate."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from ftctl.eval import compare, evaluate, gating
from ftctl.errors import GateFailed, UsageError
from ftctl.lib.stats import SAME
from ftctl.registry.workspace import Workspace
from ftctl_plugins.evaluators.judge import JudgeError
from tests.conftest import run_json
from tests.eval.conftest import QA, add_version, example, write_set

FAST = ("--set", "eval.max_new_tokens=12", "--set", "eval.bootstrap=500")


def tracked(ws, path) -> bool:
    return bool(subprocess.run(["git", "ls-files", path], cwd=ws.root, capture_output=True, text=True).stdout.strip())


def cli(capsys, *args, cwd):
    """The CLI in-process (torch is loaded once per test session); one test runs it as a subprocess."""
    from ftctl.cli.main import main

    code = main(["-C", str(cwd), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def locked(ws, fn, *args, **kw):
    with ws.run_lock("test"):
        return fn(ws, *args, **kw)


def snapshot(ws):
    """What a failed command must leave untouched: the lock and the reports folder."""
    reports = ws.reports_dir("assistant")
    return ws.lock_path.read_text(), sorted(p.name for p in reports.glob("*")) if reports.exists() else []


def test_evaluate_scores_records_and_reports(eval_ws):
    ws = eval_ws
    r = locked(ws, evaluate.evaluate, "v1.0", eval_set="qa.jsonl",
               metrics=["exact_match", "token_f1", "bleu", "rougeL", "perplexity"])
    assert r["version"] == "v1.0" and r["n"] == len(QA)
    assert set(r["metrics"]) == {"exact_match", "token_f1", "bleu", "rougeL", "perplexity"}
    assert math.isfinite(r["metrics"]["perplexity"]) and r["metrics"]["perplexity"] > 1
    # reports: complete, self-contained, committed with the record
    data = json.loads((ws.root / r["reports"]["json"]).read_text())
    assert data["complete"] and len(data["examples"]) == len(QA) and data["examples"][0]["prediction"] is not None
    page = (ws.root / r["report"]).read_text()
    assert "<svg" in page and "src=" not in page and "<link" not in page
    assert "| metric | value |" in (ws.root / r["reports"]["md"]).read_text()
    assert all(tracked(ws, p) for p in r["reports"].values())
    entry = ws.read_lock().state("assistant").versions["v1.0"]
    assert entry.metrics["rougeL[qa]"] == r["metrics"]["rougeL"]
    assert entry.evals[-1]["report"] == r["report"] and entry.evals[-1]["artifact"] == "hf"


def test_default_test_split_golden_set_and_limit(eval_ws):
    test = eval_ws.snapshot_paths("assistant")["test"]
    test.parent.mkdir(parents=True)
    write_set(test, [example(q, a, i=i) for i, (q, a, *_ ) in enumerate(QA)])
    r = locked(eval_ws, evaluate.evaluate, "v1.0", metrics=["exact_match"], limit=2)
    assert (r["eval_set"], r["n"]) == ("test", 2)
    assert "exact_match" in eval_ws.read_lock().state("assistant").versions["v1.0"].metrics  # the headline key
    ws = Workspace(eval_ws.root, overrides=(*eval_ws.overrides, "curate.golden=qa.jsonl"))
    r = locked(ws, evaluate.evaluate, "v1.0", eval_set="golden", metrics=["exact_match"], limit=1)
    assert (r["eval_set"], r["n"]) == ("golden", 1)


def test_rerun_gives_the_same_numbers_without_the_cache(eval_ws):
    ws = eval_ws
    first = locked(ws, evaluate.evaluate, "v1.1", eval_set="qa.jsonl", metrics=["token_f1", "perplexity"])
    shutil.rmtree(ws.cache_dir / "eval")
    again = locked(ws, evaluate.evaluate, "v1.1", eval_set="qa.jsonl", metrics=["token_f1", "perplexity"])
    assert again["metrics"] == first["metrics"]
    one = json.loads((ws.root / first["reports"]["json"]).read_text())["examples"]
    assert [e["prediction"] for e in one] == [e["prediction"] for e in
                                              json.loads((ws.root / again["reports"]["json"]).read_text())["examples"]]


def test_comparing_a_version_with_itself_is_zero_difference(eval_ws):
    r = locked(eval_ws, compare.compare, "v1.0", "v1.0", eval_set="qa.jsonl", metrics=["token_f1", "perplexity"])
    for m in r["metrics"].values():
        assert m["diff"] == 0 and m["ci"] == [0.0, 0.0] and m["p_value"] == 1.0 and m["verdict"] == SAME
        assert m["ties"] == len(QA)
    assert r["changed"] == []


def test_compare_json_contract_slices_and_lock(eval_ws):
    ws = eval_ws
    out = run_json(*FAST, "eval", "--compare", "base", "v1.1", "--eval-set", "qa.jsonl",
                   "--metric", "token_f1", "--metric", "perplexity", cwd=ws.root)
    assert list(out)[:5] == ["a", "b", "n", "metrics", "report"]
    assert (out["a"], out["b"], out["n"]) == ("base", "v1.1", len(QA))
    for m in out["metrics"].values():
        assert set(m) >= {"a", "b", "diff", "ci", "p_value", "verdict"}
        assert m["ci"][0] <= m["diff"] <= m["ci"][1]
        assert m["verdict"] in ("better", "worse", "no significant difference")
    assert out["metrics"]["perplexity"]["diff"] != 0  # the adapter really changes the model
    assert set(out["slices"]["agent"]) == {"support", "sales"} and set(out["slices"]["source"]) == {"chat", "docs"}
    assert out["changed"] and out["changed"][0]["metric"] == out["primary"] == "perplexity"
    assert (Workspace(ws.root).root / out["report"]).is_file()
    ev = Workspace(ws.root).read_lock().state("assistant").versions["v1.1"].evals[-1]
    assert ev["against"] == "base" and ev["metrics"]["perplexity"]["verdict"] == out["metrics"]["perplexity"]["verdict"]


def test_eval_json_contract_and_human_output(eval_ws, capsys):
    code, out, _ = cli(capsys, "--json", *FAST, "eval", "v1.0", "--eval-set", "qa.jsonl", "--metric", "rougeL",
                       cwd=eval_ws.root)
    out = json.loads(out)
    assert code == 0 and list(out)[:4] == ["version", "n", "metrics", "report"]
    assert out["version"] == "v1.0" and out["n"] == len(QA) and set(out["metrics"]) == {"rougeL"}
    code, out, _ = cli(capsys, *FAST, "eval", "v1.0", "--eval-set", "qa.jsonl", "--metric", "rougeL", "--no-record",
                       cwd=eval_ws.root)
    assert code == 0 and "rougeL" in out and "report:" in out


def test_gate_cli_exit_code_5(eval_ws, capsys):
    args = (*FAST, "eval", "--compare", "v1.0", "v1.0", "--eval-set", "qa.jsonl", "--metric", "rougeL", "--gate")
    code, out, err = cli(capsys, "--json", *args, cwd=eval_ws.root)
    assert code == 5, err
    out = json.loads(out)  # still one JSON document, with the gate's verdict
    assert out["gate"]["passed"] is False and "not a significant improvement" in out["gate"]["reasons"][0]
    code, out, err = cli(capsys, *args, cwd=eval_ws.root)
    assert code == 5 and "error: gate failed" in err and "hint: report:" in err


def test_gate_core_compares_with_base_when_nothing_is_stable(eval_ws):
    with pytest.raises(GateFailed) as e:
        locked(eval_ws, gating.gate, "v1.1", eval_set="qa.jsonl", metrics=["rougeL"])
    assert "against base" in e.value.message and e.value.exit_code == 5


def cmp(metrics):
    return {"a": "v1.0", "b": "v1.1", "metrics": metrics}


def m(diff, p, a=0.5, higher=True):
    return {"a": a, "b": a + diff, "diff": diff, "p_value": p, "higher_is_better": higher}


@pytest.mark.parametrize("metrics, gate, passed, reason", [
    ({"rougeL": m(0.1, 0.001)}, {}, True, None),
    ({"rougeL": m(0.1, 0.2)}, {}, False, "not a significant improvement"),
    ({"rougeL": m(-0.1, 0.001)}, {}, False, "not a significant improvement"),
    ({"rougeL": m(0.01, 0.001)}, {"min_improvement": 0.05}, False, "less than min_improvement"),
    ({"rougeL": m(0.1, 0.001), "bleu": m(-5, 0.001)}, {"guards": ["bleu"]}, False, "guard bleu"),
    ({"rougeL": m(0.1, 0.001), "bleu": m(-5, 0.3)}, {"guards": ["bleu"]}, True, None),
    ({"perplexity": m(-3.0, 0.001, a=20, higher=False)}, {"metric": "perplexity"}, True, None),
    ({"token_f1": m(0.1, 0.001)}, {}, False, "not measured"),
    ({"rougeL": m(0.1, 0.03)}, {"confidence": 0.99}, False, "p<0.01"),
])
def test_check_gate_rules(metrics, gate, passed, reason):
    from ftctl.config import GateConfig

    r = gating.check_gate(cmp(metrics), GateConfig(**gate))
    assert r["passed"] is passed
    if reason:
        assert reason in r["reasons"][0]


# --- bad input: each ends in a clear error and loses nothing ---------------------------------------


def test_version_without_adapter(eval_ws):
    add_version(eval_ws, "v1.2")
    before = snapshot(eval_ws)
    with pytest.raises(UsageError, match="has no adapter") as e:
        locked(eval_ws, evaluate.evaluate, "v1.2", eval_set="qa.jsonl")
    assert e.value.hint and snapshot(eval_ws) == before


def test_adapter_files_missing_points_to_checkout(eval_ws):
    shutil.rmtree(eval_ws.adapter_dir("assistant", "v1.0"))
    with pytest.raises(UsageError, match="not in the workspace") as e:
        locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="qa.jsonl")
    assert "ftctl checkout v1.0" in e.value.hint


def test_requested_export_missing(eval_ws):
    add_version(eval_ws, "v1.2", adapter=eval_ws.adapter_dir("assistant", "v1.0"),
                exports=[{"path": "exports/assistant/v1.2/model-Q8_0.gguf", "kind": "gguf", "quant": "Q8_0"}])
    before = snapshot(eval_ws)
    with pytest.raises(UsageError, match="has no GGUF export Q6_K") as e:
        locked(eval_ws, evaluate.evaluate, "v1.2", eval_set="qa.jsonl", artifact="gguf:Q6_K")
    assert "gguf:Q8_0" in e.value.hint and "ftctl export v1.2" in e.value.hint
    with pytest.raises(UsageError, match="is not in the workspace"):  # declared, but the file is gone
        locked(eval_ws, evaluate.evaluate, "v1.2", eval_set="qa.jsonl", artifact="gguf:Q8_0")
    with pytest.raises(UsageError, match="unknown artifact"):
        locked(eval_ws, evaluate.evaluate, "v1.2", eval_set="qa.jsonl", artifact="onnx")
    assert snapshot(eval_ws) == before


def test_empty_missing_and_malformed_eval_sets(eval_ws):
    before = snapshot(eval_ws)
    (eval_ws.root / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="is empty") as e:
        locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="empty.jsonl")
    assert e.value.hint
    with pytest.raises(UsageError, match="not found"):
        locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="nope.jsonl")
    (eval_ws.root / "bad.jsonl").write_text('{"messages": [\n')
    with pytest.raises(UsageError, match="not a JSONL of examples"):
        locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="bad.jsonl")
    with pytest.raises(UsageError, match="no golden set"):
        locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="golden")
    assert snapshot(eval_ws) == before


def test_empty_eval_set_through_the_cli(eval_ws, capsys):
    (eval_ws.root / "empty.jsonl").write_text("")
    code, _, err = cli(capsys, *FAST, "eval", "v1.0", "--eval-set", "empty.jsonl", cwd=eval_ws.root)
    assert code == 2 and "error: eval set empty.jsonl is empty" in err and "hint:" in err


def test_missing_references_skip_only_the_metrics_that_need_them(eval_ws):
    src = {"source_text": "Paris is the capital of France."}
    write_set(eval_ws.root / "partial.jsonl", [example("Capital of France?", "Paris.", meta=src, i=1),
                                               example("Capital of France?", None, meta=src, i=2)])
    write_set(eval_ws.root / "norefs.jsonl", [example("Capital of France?", None, meta=src, i=1)])
    r = locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="partial.jsonl", metrics=["token_f1", "groundedness"])
    assert set(r["metrics"]) == {"token_f1", "groundedness"}
    assert any("1 example(s) without a reference" in n for n in r["notes"])
    r = locked(eval_ws, evaluate.evaluate, "v1.0", eval_set="norefs.jsonl", metrics=["token_f1", "groundedness"])
    assert set(r["metrics"]) == {"groundedness"}
    assert "token_f1: skipped, no example has a reference answer" in r["notes"]


def test_judge_down_writes_no_report_and_records_nothing(tmp_path, tiny_eval_base):
    from ftctl.registry.init import init

    from tests.eval.conftest import make_adapter

    init(tmp_path / "ws", base=str(tiny_eval_base))
    ws = Workspace(tmp_path / "ws", overrides=("eval.max_new_tokens=4", "eval.llm_judge.endpoint=http://127.0.0.1:9/v1",
                                               "eval.llm_judge.retries=1", "eval.llm_judge.timeout=2"))
    add_version(ws, "v1.0", adapter=make_adapter(tiny_eval_base, ws.adapter_dir("assistant", "v1.0"), 1))
    write_set(ws.root / "qa.jsonl", [example(*QA[0][:2])])
    before = snapshot(ws)
    with pytest.raises(JudgeError, match="failed after 2 attempts") as e:
        locked(ws, evaluate.evaluate, "v1.0", eval_set="qa.jsonl", metrics=["token_f1", "llm_judge"])
    assert "no report was written" in e.value.hint
    assert snapshot(ws) == before


def test_chat_one_prompt_and_interactive(eval_ws, capsys, monkeypatch):
    import io

    code, out, _ = cli(capsys, "--json", *FAST, "chat", "v1.0", "--prompt", "Hi!", cwd=eval_ws.root)
    out = json.loads(out)
    assert code == 0 and out["version"] == "v1.0" and out["artifact"] == "hf" and isinstance(out["answer"], str)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi!\n/reset\nHello\n/exit\nnever read\n"))
    code, out, _ = cli(capsys, *FAST, "chat", "v1.0", cwd=eval_ws.root)
    assert code == 0 and out.count("v1.0> ") == 2


def test_compare_reports_classification_unparsed_and_latency(eval_ws):
    """The tiny random model answers no label: every answer is unparsed (counted per side, never
    wrong), so the metric is skipped with a note; latency is measured for both sides."""
    ws = eval_ws
    rows = [example(q, "approve" if i % 2 else "deny", i=i) for i, (q, *_ ) in enumerate(QA)]
    write_set(ws.root / "claims.jsonl", rows)
    out = run_json(*FAST, "--set", "eval.classification.labels=[approve, deny]", "eval", "--compare", "base", "v1.0",
                   "--eval-set", "claims.jsonl", "--metric", "classification", "--metric", "token_f1", cwd=ws.root)
    for side in ("a", "b"):
        d = out["details"][side]["classification"]
        assert d["unparsed"] == len(QA) and d["scored"] == 0
    assert any("classification: skipped" in n for n in out["notes"])
    lat = out["latency"]
    assert lat["a"]["backend"] == lat["b"]["backend"] == "hf" and lat["a"]["n"] == len(QA)
    assert 0 < lat["a"]["median_s"] <= lat["a"]["p95_s"] and lat["b"]["tokens_per_s"] > 0
    assert lat["verdict"] in ("better", "worse", "no significant difference")
    md = (ws.root / out["reports"]["md"]).read_text()
    assert "## Latency" in md and "unparsed (no label found: not counted as wrong)" in md
    ev = Workspace(ws.root).read_lock().state("assistant").versions["v1.0"].evals[-1]
    assert ev["latency"]["median_s"] == lat["b"]["median_s"]


def test_eval_sources_folder_adds_groundedness_and_a_missing_one_is_a_config_error(eval_ws, capsys):
    docs = eval_ws.root / "docs-src"
    docs.mkdir()
    (docs / "facts.md").write_text("".join(f"{q} {a}\n" for q, a, *_ in QA))
    out = run_json(*FAST, "eval", "v1.0", "--eval-set", "qa.jsonl", "--metric", "token_f1", "--sources", "docs-src",
                   "--no-record", cwd=eval_ws.root)
    assert set(out["metrics"]) == {"token_f1", "groundedness"} and 0 <= out["metrics"]["groundedness"] <= 1
    code, out, err = cli(capsys, "--json", *FAST, "eval", "v1.0", "--eval-set", "qa.jsonl", "--sources", "nope",
                         cwd=eval_ws.root)
    assert code == 2 and "is not a folder" in out + err  # a config error, before anything is generated


def test_guard_tasks_run_on_both_sides_and_a_drop_beyond_the_margin_fails_the_gate(eval_ws):
    ws = eval_ws
    out = run_json(*FAST, "--set", "eval.guards_tasks=[capitals, currencies]", "--set", "eval.guards_limit=6",
                   "eval", "--compare", "base", "v1.0", "--eval-set", "qa.jsonl", "--metric", "token_f1",
                   "--no-record", cwd=ws.root)
    assert set(out["guards"]) == {"capitals", "currencies"}
    for g in out["guards"].values():
        assert g["n"] == 6 and 0 <= g["a"] <= 1 and g["margin"] == 0.05 and g["failed"] is False
    assert "## Guard tasks" in (ws.root / out["reports"]["md"]).read_text()
    # the rule itself, on scores a real guard would give: 12 of 40 capitals forgotten, none learnt
    from ftctl.eval.compare import compare_guards

    cfg = ws.model("assistant").eval
    rows = compare_guards({"capitals": [1.0] * 40}, {"capitals": [0.0] * 12 + [1.0] * 28}, cfg)
    assert rows["capitals"]["verdict"] == "worse" and rows["capitals"]["failed"]
    gate = gating.check_gate({"metrics": {}, "guards": rows, "a": "base", "b": "v1.0"}, cfg.gate)
    assert any("guard task capitals" in r and "forgot" in r for r in gate["reasons"])
    small = compare_guards({"capitals": [1.0] * 40}, {"capitals": [0.0] + [1.0] * 39}, cfg)  # 1 of 40: within margin
    assert not small["capitals"]["failed"]


def test_an_unknown_guard_task_is_a_config_error_before_generating(eval_ws, capsys):
    code, out, err = cli(capsys, "--json", *FAST, "--set", "eval.guards_tasks=[nope]", "eval", "--compare", "base",
                         "v1.0", "--eval-set", "qa.jsonl", "--no-record", cwd=eval_ws.root)
    assert code == 2 and "no guard plugin named 'nope'" in out + err and "capitals" in out + err
