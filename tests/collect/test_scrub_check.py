"""The loop notices when scrubbing eats the data (issue 20): collect's scrub check stops with exit 2
on a placeholder type that changes too many answers, shows examples without quoting PHI, takes
`accept_heavy`, and rejects rows left as placeholders only."""

from __future__ import annotations

import json

import pytest

from ftctl.data import scrub_check
from ftctl.lib import placeholders
from tests.collect.conftest import configure, event, write_jsonl
from tests.conftest import run_ftctl


def test_check_counts_changed_and_emptied_answers():
    c = scrub_check.ScrubCheck(heavy_share=0.05, max_emptied=0.01)
    user = {"role": "user", "content": "q"}
    rows = [([user, {"role": "assistant", "content": "I70.302"}], [user, {"role": "assistant", "content": "I70.302"}])
            for _ in range(18)]
    rows.append(([user, {"role": "assistant", "content": "Jane Roe"}], [user, {"role": "assistant", "content": "<PERSON>"}]))
    rows.append(([user, {"role": "assistant", "content": "Ask Jane Roe at 415-555-0132"}],
                 [user, {"role": "assistant", "content": "Ask <PERSON> at <PHONE>"}]))
    rejected = [c.add(b, a) for b, a in rows]
    assert rejected == [False] * 18 + [True, False]
    assert c.answers == 20 and c.changed == {"PERSON": 2, "PHONE": 1} and c.emptied == {"PERSON": 1}
    f = {x["type"]: x for x in c.findings()}
    assert set(f) == {"PERSON"}  # 10% > 5% changed, 5% > 1% emptied; PHONE's 5% is at the limit, not over
    assert "nothing but placeholders" in f["PERSON"]["why"]
    ex = f["PERSON"]["examples"][1]
    assert ex == {"before": "Ask [Aaaa Aaa] at [000-000-0000]", "after": "Ask <PERSON> at <PHONE>"}
    assert "Jane" not in json.dumps(c.to_card()) and "555" not in json.dumps(c.to_card())


def test_a_literal_placeholder_in_an_answer_is_not_charged():
    c = scrub_check.ScrubCheck()
    msgs = [{"role": "assistant", "content": "Use List<T> and <PERSON> as written"}]
    assert not c.add(msgs, msgs) and not c.changed
    assert placeholders.only_placeholders("<PERSON>, <DATE>.") and not placeholders.only_placeholders("<PERSON> 2")
    assert placeholders.shape("I70.302 Jane") == "A00.000 Aaaa"


def _code_rows(n: int = 40) -> list[dict]:
    """A clinical coding assistant: ICD-10-CM codes as answers, names and dates in questions."""
    codes = ["I70.302", "G20", "E11.9", "J45.909", "I10", "K50.90", "C81.90", "G30.1", "M54.5", "F32.A"]
    return [event(f"Patient Jane Roe, seen 03/04/2021: which ICD-10-CM code for case {i}?", codes[i % len(codes)],
                  i=i, rating=5) for i in range(n)]


def test_default_collect_keeps_codes_and_passes_the_check(workspace):
    write_jsonl(workspace.root / "feedback" / "e.jsonl", _code_rows())
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}], {"scrub": {"enabled": True}})
    r = run_ftctl("--json", "collect", cwd=workspace.root)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    check = out["card"]["scrub_check"]
    assert check["answers"] == 40 and check["findings"] == [] and out["kept"] == 40
    texts = workspace.data_dir("assistant").joinpath("train.jsonl").read_text()
    assert "I70.302" in texts and "Jane Roe" not in texts and "03/04/2021" not in texts


def test_collect_stops_with_exit_2_and_shows_shapes_not_phi(workspace):
    rows = _code_rows(30) + [event(f"Who signed case {i}?", f"Dr. Amelia Hartwell on 0{1 + i % 9}/12/2023", i=100 + i,
                                   rating=5) for i in range(6)]
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}], {"scrub": {"enabled": True}})
    head = workspace.read_lock().models.get("assistant")
    r = run_ftctl("collect", cwd=workspace.root)
    assert r.returncode == 2, r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert "<DATE>" in said and "accept_heavy" in said and "nothing was recorded" in said
    assert "00/00/0000" in said  # the example's before, as its shape
    assert "Hartwell" not in said and "12/2023" not in said
    assert workspace.read_lock().models.get("assistant") == head and not workspace.data_dir("assistant").exists()

    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "accept_heavy": ["DATE", "PERSON"]}})
    r = run_ftctl("--json", "collect", cwd=workspace.root)
    assert r.returncode == 0, r.stderr
    findings = json.loads(r.stdout)["card"]["scrub_check"]["findings"]
    assert {f["type"] for f in findings} >= {"DATE"} and all(f["accepted"] for f in findings)


def test_rows_left_as_placeholders_only_are_rejected_and_counted(workspace):
    rows = _code_rows(200) + [event("Who is the attending?", "Amelia Hartwell", i=300, rating=5)]
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}], {"scrub": {"enabled": True}})
    from ftctl.data.collect import collect

    with workspace.run_lock("test"):
        r = collect(workspace, "assistant", log=lambda *_: None)
    if "PERSON" not in r["card"]["pii"]["types"]:
        pytest.skip("no NER model installed: the name is not found")
    assert r["rejected"] == {"scrubbed_to_placeholders": 1} and r["kept"] == 200
    assert r["card"]["scrub_check"]["rows_rejected"] == 1
    rejects = [json.loads(x) for x in (workspace.data_dir("assistant") / "rejects.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in rejects] == ["scrubbed_to_placeholders"] and "Hartwell" not in json.dumps(rejects)
    texts = "".join(p.read_text() for p in workspace.data_dir("assistant").glob("*.jsonl"))
    assert "<PERSON>" not in texts.replace("Patient <PERSON>", "")
