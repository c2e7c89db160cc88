"""PHI nowhere raw (issue 20): each side door a value could leave a snapshot by, closed.

Every test plants real PHI-shaped values where the door is and then searches every byte the
command wrote for them."""

from __future__ import annotations

from pathlib import Path

from tests.collect.conftest import configure, event, write_jsonl

SSN, EMAIL, PHONE, MEMBER = "536-22-8890", "jane.roe@example.com", "415-555-0132", 7319048852


def everything(directory: Path) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(directory.rglob("*")) if p.is_file())


def collect_quietly(ws, **kw):
    from ftctl.data.collect import collect

    with ws.run_lock("test"):
        return collect(ws, "assistant", log=lambda *_: None, **kw)


def test_correction_meta_and_reject_details_never_hold_the_raw_value(workspace):
    rows = [event(f"How do I renew prescription {i}?", f"Call the pharmacy {i}.", i=i) for i in range(4)]
    rows[0]["correction"] = f"Email {EMAIL} or call {PHONE}; quote SSN {SSN}."
    rows[0]["feedback_type"] = "correction"
    rows[1]["meta"] = {"member": MEMBER, "caller": {"email": EMAIL, "notes": [f"ssn {SSN}", "ok"]},
                       "channel": "web", "score": 3}
    rows.append(event("Rating typed wrong", "x", i=10, rating=SSN))  # wrong_type:rating
    rows.append(event("Out of range", "y", i=11, rating=int(SSN.replace("-", ""))))  # rating_out_of_range
    rows.append(event("Odd feedback", "z", i=12, feedback_type=EMAIL))  # unknown_feedback_type
    rows.append({"messages": [{"role": EMAIL, "content": "hi"}], "created_at": "2024-03-20T10:00:00Z"})  # bad_message
    rows.append({"messages": [{"role": "user", "content": int(SSN.replace("-", ""))}],
                 "created_at": "2024-03-21T10:00:00Z"})  # wrong_type:content
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    # one answer in four is scrubbed: more than the scrub check's 5%, which this test is not about
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "names": False, "accept_heavy": ["EMAIL", "PHONE", "SSN"]}})
    r = collect_quietly(workspace)
    assert r["kept"] == 4 and sum(r["rejected"].values()) == 5, r
    written = everything(workspace.data_dir("assistant"))
    for raw in (SSN, SSN.replace("-", ""), EMAIL, PHONE, str(MEMBER)):
        assert raw not in written, raw
    # what was scrubbed is still there, as placeholders, in the place it was
    from ftctl.records import read_jsonl

    rows_out = {ex.conversation_id: ex for s in ("train", "val", "test")
                for ex in read_jsonl(workspace.snapshot_paths("assistant")[s])}
    corrected = rows_out["conv0"]
    assert corrected.correction == corrected.response and "<EMAIL>" in corrected.correction
    meta = rows_out["conv1"].meta
    assert meta["caller"]["email"] == "<EMAIL>" and meta["channel"] == "web" and meta["score"] == 3
    assert meta["member"] != MEMBER and meta["caller"]["notes"][1] == "ok"
    rejects = (workspace.data_dir("assistant") / "rejects.jsonl").read_text()
    assert "wrong_type:rating" in rejects and "str of 11 chars" in rejects  # the shape, not the value


def test_a_carried_snapshot_from_before_is_scrubbed_again(workspace):
    """A snapshot written before correction and meta were scrubbed holds them raw: the next
    incremental collect must not carry them forward as they are."""
    import json

    rows = [event(f"Question {i}?", f"Answer {i}.", i=i) for i in range(3)]
    rows[0]["meta"] = {"caller": EMAIL}
    write_jsonl(workspace.root / "feedback" / "e.jsonl", rows)
    configure(workspace, [{"name": "e", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"scrub": {"enabled": True, "names": False}})
    collect_quietly(workspace)
    # make it look like an old snapshot: raw meta, and a card without `fields`
    d = workspace.data_dir("assistant")
    for s in ("train", "val", "test"):
        f = d / f"{s}.jsonl"
        f.write_text(f.read_text().replace('"<EMAIL>"', json.dumps(EMAIL)))
    card = json.loads((d / "card.json").read_text())
    del card["pii"]["fields"]
    (d / "card.json").write_text(json.dumps(card))
    assert EMAIL in everything(d)
    write_jsonl(workspace.root / "feedback" / "e.jsonl", [*rows, event("Later?", "Later.", i=9)])
    collect_quietly(workspace)
    assert EMAIL not in everything(workspace.data_dir("assistant"))


def test_a_third_party_reject_detail_is_scrubbed():
    from collections import Counter

    from ftctl.data.collect import _reject_line
    from ftctl.lib.scrub import Scrubber
    from ftctl.records import Reject

    line = _reject_line(Reject("crm", "crm:7", "bad_row", f"row was {EMAIL} / {SSN}"), Scrubber(names=False))
    assert EMAIL not in str(line) and SSN not in str(line) and line["where"] == "crm:7"

    class Broken:
        def scrub(self, text, counts: Counter):
            raise RuntimeError("regex timed out")

    line = _reject_line(Reject("crm", "crm:8", "bad_row", f"row was {EMAIL}"), Broken())
    assert EMAIL not in str(line) and "withheld" in line["detail"]
