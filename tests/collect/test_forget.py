"""`ftctl forget`: a planted conversation is found through lineage, tombstoned (hashed) and gone
from the next version's snapshot."""

from __future__ import annotations

import json

from ftctl.data.collect import collect
from ftctl.forget import _cached_rows, forget
from ftctl.train import train
from tests.collect.conftest import configure as configure_sources
from tests.collect.conftest import event, write_jsonl
from tests.train.conftest import configure as configure_training

MEMBER = "XYZ-998877"


def test_forget_a_value_then_retrain_without_it(workspace, tiny_base, ftctl):
    ws = workspace
    rows = [event(f"What is the capital of country {i}?", f"It is city {i}.", i=i, rating=5) for i in range(16)]
    rows.append(event(f"Hi, my member number is {MEMBER}, is my claim covered?", "Yes, it is covered.",
                      i=90, rating=5))
    write_jsonl(ws.root / "feedback" / "events.jsonl", rows)
    configure_sources(ws, [{"name": "events", "kind": "jsonl", "path": "feedback/*.jsonl"}])
    configure_training(ws, tiny_base, max_steps=2)
    with ws.run_lock("test"):
        collect(ws, "assistant", log=lambda *_: None)
        first = train(ws, "assistant", log=lambda *_: None)["version"]
    assert MEMBER in "".join(p.read_text() for p in ws.data_dir("assistant").glob("*.jsonl"))

    # the value, written another way, is still the value (folding + tokens)
    r = forget(ws, value="xyz 998877", retrain=True, log=lambda *_: None)
    assert r["conversations"] == 1 and r["source_rows"] == 1
    reached = r["reached"]["assistant"]
    assert reached["versions"] == [first] and reached["snapshot_rows"] == 1
    assert any("collect" in s for s in r["plan"]["assistant"]) and any("train" in s for s in r["plan"]["assistant"])
    second = r["retrained"]["assistant"]["version"]
    assert second and second != first and r["retrained"]["assistant"]["forgotten"] == 1

    lock_text = ws.lock_path.read_text()
    assert "998877" not in lock_text and "XYZ" not in lock_text
    lock = ws.read_lock()
    assert len(lock.model_extra["tombstones"]) == 2  # the value and the conversation it reached
    assert any(h.get("action") == "forget" and h["versions"] == [first] for h in lock.state("assistant").history)

    # the new version's snapshot (from the DVC cache, as recorded) no longer has it
    md5 = lock.state("assistant").versions[second].dataset["md5"]
    texts = json.dumps(list(_cached_rows(ws, md5)))
    assert MEMBER not in texts and "It is city 3." in texts

    # and no later collect brings it back; the CLI shows the plan with --json
    with ws.run_lock("test"):
        again = collect(ws, "assistant", since="all", log=lambda *_: None)
    assert again["filtered"].get("forgotten") == 1
    out = ftctl("--json", "forget", "--conversation", "conv3", cwd=ws.root, check=True)
    data = json.loads(out.stdout)
    assert data["conversations"] == 1 and "conv3" not in ws.lock_path.read_text()
