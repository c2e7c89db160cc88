"""`ftctl collect` end to end: real sources, DVC, git, models.lock; counts always add up."""

from __future__ import annotations

import json
import shutil

import pytest

from ftctl.data.collect import collect
from ftctl.errors import FtctlError
from ftctl.records import read_jsonl
from tests.collect.conftest import configure, event, write_jsonl
from tests.conftest import ROOT, run_ftctl, run_json

pytestmark = pytest.mark.integration


def balanced(r):
    return r["read"] == r["kept"] + sum(r["filtered"].values()) + sum(r["rejected"].values())


def events(n, start=0):
    return [event(f"Question number {i} about the service?", f"Answer number {i}, in full.", i=i, rating=5,
                  agent="support") for i in range(start, start + n)]


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_cli_json_contract_pii_corrections_and_recording(workspace):
    ws = workspace
    rows = events(30) + [
        event("My email is jane.roe@example.com, can you reset my password?", "Done, check your inbox.", i=40, rating=5),
        event("Call me at (415) 555-0132 about claim 7", "Will do.", i=41, rating=4),
        event("Is the sky green?", "Yes.", i=42, rating=1, correction="No, it is blue on a clear day."),
        event("Capital of France?", "Berlin.", i=43, rating=1, feedback_type="thumbs_down"),
        event("Capital of France?", "Paris.", i=44, rating=5),
        event("Question number 3 about the service?", "Answer number 3, in full.", i=3, rating=5),  # duplicate
        event("bad", "row", i=45, rating=11),
        b"{oops\n",
    ]
    write_jsonl(ws.root / "feedback" / "events.jsonl", rows)
    configure(ws, [{"name": "events", "kind": "jsonl", "path": "feedback/*.jsonl"}],
              {"min_rating": 4, "scrub": {"enabled": True}})
    r = run_json("collect", cwd=ws.root)
    assert balanced(r) and r["read"] == 38 and r["kept"] == 34
    assert r["filtered"] == {"duplicate": 1, "negative_feedback": 1}
    assert r["rejected"] == {"invalid_json": 1, "rating_out_of_range": 1}
    assert r["scrubbed"] == {"EMAIL": 1, "PHONE": 1}
    assert sum(r["splits"].values()) == 34 and r["snapshot"] == "data/assistant"
    paths = ws.snapshot_paths("assistant")
    texts = "".join(paths[s].read_text() for s in ("train", "val", "test"))
    assert "jane.roe@example.com" not in texts and "<EMAIL>" in texts and "555-0132" not in texts
    assert "No, it is blue on a clear day." in texts  # the correction is the target
    prefs = lines(paths["preferences"])
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in prefs} == {
        ("No, it is blue on a clear day.", "Yes."), ("Paris.", "Berlin.")}
    rejects = lines(paths["rejects"])
    assert {(x["where"], x["reason"]) for x in rejects} == {("feedback/events.jsonl:37", "rating_out_of_range"),
                                                            ("feedback/events.jsonl:38", "invalid_json")}
    assert r["rejects_file"] == "data/assistant/rejects.jsonl"
    card = json.loads(paths["card"].read_text())
    assert card["read"] == 38 and sum(card["tokens"]["histogram"].values()) == 34
    lock = ws.read_lock().models["assistant"]
    dvc_md5 = (ws.root / "data" / "assistant.dvc").read_text().split("md5: ")[1].split()[0]
    assert lock.dataset["md5"] == dvc_md5 and lock.dataset["rows"] == r["splits"]
    assert lock.watermarks["events"] == "2024-03-28T10:00:00+00:00"
    log = run_ftctl("log", cwd=ws.root).stdout + __import__("subprocess").run(
        ["git", "log", "--oneline"], cwd=ws.root, capture_output=True, text=True).stdout
    assert "collect assistant: 34 examples" in log


def test_strict_and_dry_run_write_nothing(workspace):
    ws = workspace
    write_jsonl(ws.root / "fb.jsonl", events(5) + [b"not json\n"])
    configure(ws, [{"name": "fb", "kind": "jsonl", "path": "fb.jsonl"}])
    before = ws.lock_path.read_text()
    proc = run_ftctl("--json", "collect", "--strict", cwd=ws.root)
    assert proc.returncode == 1 and "1 row(s) rejected" in json.loads(proc.stdout)["error"]
    assert (ws.root / ".ftctl" / "rejects-assistant.jsonl").read_text().count("invalid_json") == 1
    dry = collect(ws, dry_run=True, log=lambda s: None)
    assert balanced(dry) and dry["kept"] == 5 and dry["snapshot"] is None
    assert not ws.data_dir("assistant").exists() and ws.lock_path.read_text() == before


def test_incremental_collect_keeps_every_example_in_its_split(workspace):
    ws = workspace
    feed = ws.root / "fb.jsonl"
    write_jsonl(feed, events(60))
    configure(ws, [{"name": "fb", "kind": "jsonl", "path": "fb.jsonl"}], {"split": {"val": 0.2, "test": 0.2}})
    first = collect(ws, log=lambda s: None)
    where = {}
    for s in ("train", "val", "test"):
        for e in lines(ws.snapshot_paths("assistant")[s]):
            where[e["conversation_id"]] = s
    assert len(where) == 60
    newer = [event(f"Later question {i}?", f"Later answer {i}.", i=i, rating=5,
                   created_at=f"2024-05-{1 + i % 28:02d}T10:00:00Z") for i in range(100, 120)]
    write_jsonl(feed, events(60) + newer)
    second = collect(ws, log=lambda s: None)
    assert balanced(second) and second["kept"] == 80
    assert second["filtered"] == {"already_collected": 60} and second["read"] == 60 + 80
    after = {}
    for s in ("train", "val", "test"):
        for e in lines(ws.snapshot_paths("assistant")[s]):
            after[e["conversation_id"]] = s
    assert all(after[k] == s for k, s in where.items())  # nothing moved
    assert ws.read_lock().models["assistant"].watermarks["fb"].startswith("2024-05-")
    # without the previous snapshot in the work tree, an incremental collect would lose rows
    shutil.move(ws.data_dir("assistant"), ws.root / "moved")
    with pytest.raises(FtctlError, match="previous snapshot"):
        collect(ws, log=lambda s: None)
    # --since all rebuilds from the sources alone
    full = collect(ws, since="all", log=lambda s: None)
    assert full["read"] == 80 and full["kept"] == 80 and first["kept"] == 60


def test_golden_set_and_limit(workspace):
    ws = workspace
    write_jsonl(ws.root / "fb.jsonl", events(20))
    write_jsonl(ws.root / "golden.jsonl", [{"prompt": "Question number 4 about the service?"}])
    configure(ws, [{"name": "fb", "kind": "jsonl", "path": "fb.jsonl"}], {"golden": "golden.jsonl", "limit": 10})
    r = collect(ws, dry_run=True, log=lambda s: None)
    assert r["filtered"] == {"golden": 1, "limit": 9} and r["kept"] == 10 and balanced(r)


def test_no_sources_and_bad_since(workspace):
    configure(workspace, [])
    with pytest.raises(FtctlError, match="no sources"):
        collect(workspace, log=lambda s: None)
    configure(workspace, [{"name": "fb", "kind": "jsonl", "path": "fb.jsonl"}])
    with pytest.raises(FtctlError, match="not a date"):
        collect(workspace, since="yesterday-ish", log=lambda s: None)


def test_unreachable_postgres_source_fails_cleanly(workspace):
    configure(workspace, [{"name": "chat", "kind": "postgres", "dsn": "postgresql://u:topsecret@127.0.0.1:1/x",
                           "table": "messages", "connect_timeout": 2}])
    proc = run_ftctl("collect", cwd=workspace.root)
    assert proc.returncode == 1 and "cannot connect" in proc.stderr and "topsecret" not in proc.stderr
    assert not workspace.data_dir("assistant").exists()


def test_demo_config_collects_the_bundled_sample(workspace):
    ws = workspace
    shutil.copy(ROOT / "ftctl.yaml", ws.config_path)
    shutil.copytree(ROOT / "samples", ws.root / "samples")
    r = run_json("collect", "--dry-run", cwd=ws.root)
    assert balanced(r) and r["kept"] > 200 and r["preferences"] > 10
    assert set(r["rejected"]) == {"bad_role", "missing_field:content"}


def test_unpaired_disliked_answers_are_written_once_carried_and_forgotten(workspace):
    from ftctl.forget import forget

    ws = workspace
    feed = ws.root / "fb.jsonl"
    rows = events(10) + [
        event("Capital of France?", "Berlin.", i=43, feedback_type="thumbs_down"),  # paired with Paris
        event("Capital of France?", "Paris.", i=44, rating=5),
        event("Is the moon made of cheese?", "Yes, cheddar.", i=50, rating=1),  # no kept answer to pair with
        event("Is the moon made of cheese?", "Yes, cheddar.", i=51, rating=1),  # the same answer again
        event("Is the sky green?", "Yes.", i=42, rating=1, correction="No, it is blue."),
    ]
    write_jsonl(feed, rows)
    configure(ws, [{"name": "fb", "kind": "jsonl", "path": "fb.jsonl"}], {"min_rating": 4})
    r = collect(ws, log=lambda s: None)
    assert balanced(r) and r["kept"] == 12 and r["filtered"] == {"min_rating": 2, "negative_feedback": 1}
    path = ws.snapshot_paths("assistant")["unpaired"]
    unpaired = lines(path)
    assert {(u["from"], u["completion"][0]["content"]) for u in unpaired} == {
        ("negative_feedback", "Berlin."), ("min_rating", "Yes, cheddar."), ("correction", "Yes.")}
    assert all(u["label"] is False and u["split"] in ("train", "val", "test") for u in unpaired)
    cheese = next(u for u in unpaired if u["key"] == "conv50")
    assert cheese["prompt"] == [{"role": "user", "content": "Is the moon made of cheese?"}]
    assert r["unpaired"] == 3 and json.loads(ws.snapshot_paths("assistant")["card"].read_text())["unpaired"] == 3
    assert ws.read_lock().models["assistant"].dataset["card"]["unpaired"] == 3

    # an incremental collect carries the disliked answers (in no split) and adds the new one
    write_jsonl(feed, rows + [event("Is water dry?", "Yes.", i=60, rating=2, created_at="2024-05-01T10:00:00Z")])
    second = collect(ws, log=lambda s: None)
    assert balanced(second) and second["unpaired"] == 4 and len(lines(path)) == 4

    # a forgotten conversation held only there is found, and the next collect drops its carried line
    f = forget(ws, conversation="conv50", log=lambda *_: None)
    assert f["reached"]["assistant"]["snapshot_rows"] == 1
    third = collect(ws, log=lambda s: None)
    assert third["unpaired"] == 3 and "conv50" not in path.read_text() and "cheddar" not in path.read_text()


def test_blank_answers_are_read_never_trained_and_a_disliked_one_is_a_rejected_answer(workspace):
    ws = workspace
    write_jsonl(ws.root / "fb.jsonl", [event("Where is my parcel?", "", 0, rating=1),
                                       event("Where is my parcel?", "It left the depot today.", 0, rating=5),
                                       event("Can I pay by card?", "   ", 1, rating=5),
                                       event("Can I pay by card?", None, 2, rating=5)])
    configure(ws, [{"name": "fb", "kind": "jsonl", "path": "fb.jsonl"}], {"min_rating": 3, "split": {"val": 0, "test": 0}})
    r = run_json("collect", cwd=ws.root)
    assert r["read"] == 4 and r["kept"] == 1 and r["rejected"] == {"missing_field:response": 1}
    assert r["filtered"] == {"min_rating": 1, "empty_answer": 1}
    paths = ws.snapshot_paths("assistant")
    assert [ex.response for ex in read_jsonl(paths["train"])] == ["It left the depot today."]
    [pair] = [json.loads(line) for line in paths["preferences"].read_text().splitlines()]
    assert pair["chosen"][-1]["content"] == "It left the depot today." and pair["rejected"][-1]["content"] == ""
    [disliked] = [json.loads(line) for line in paths["unpaired"].read_text().splitlines()]
    assert disliked["completion"][-1]["content"] == "" and disliked["label"] is False
