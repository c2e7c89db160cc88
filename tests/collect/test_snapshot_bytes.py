"""A snapshot's bytes are pinned: curation made faster must write exactly what it wrote before.

A varied feedback file (duplicates up to case and spacing, conflicts, corrections, every kind of
negative, tool calls, meta with a 70-bit int, times in odd zones and none, rejects) goes through
three real collects (a full one, an incremental one, a rebuild under other rules) with the
clock fixed; every file but the card is compared by SHA-256 with what the code before issue 27's
speed-ups wrote (the card's counts are checked instead: it also records the config's defaults).
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timezone

import pytest

from tests.collect.conftest import configure, write_jsonl
from tests.collect.test_formats import TOOL_TEMPLATE

pytestmark = pytest.mark.integration

WORDS = ["alpha", "Beta", "GAMMA", "déjà", "vu", "naïve", "日本語", "emoji😀", "tab\there", "x\u2028y", "ctl\x01",
         'quote"', "back\\slash", "  spaced  "]
ZONES = ["Z", "+00:00", "+05:30", "-03:00", "", "+00:19:32", ".123456Z", ".5+01:00"]


def rows(rnd: random.Random, n: int, start: int = 0) -> list[dict]:
    def text(k):
        return " ".join(rnd.choice(WORDS) for _ in range(k))

    prompts = [text(rnd.randint(1, 12)) for _ in range(n // 3 + 1)]
    out = []
    for i in range(start, start + n):
        p = rnd.choice(prompts)
        if rnd.random() < 0.2:
            p = "  " + p.upper() + " "  # the same prompt once case and spacing are folded
        r = {"prompt": p, "response": text(rnd.randint(1, 30)) if rnd.random() < 0.7 else "same answer",
             "conversation_id": f"c{rnd.randint(0, n // 2)}" if rnd.random() < 0.9 else None}
        k = rnd.random()
        if k < 0.15:
            r["rating"] = rnd.choice([1, 2, 3, 4, 5, 4.5, "5", 2.0])
        elif k < 0.25:
            r["feedback_type"] = rnd.choice(["thumbs_up", "thumbs_down", "copy", "edit", "Thumbs Down", "rating"])
        elif k < 0.3:
            r["correction"], r["rating"] = text(5), 1
        elif k < 0.35:
            r["reward"] = rnd.choice([-1, -0.5, 0, 0.5, 1])
        elif k < 0.38:
            r["rating"] = 11  # rejected
        elif k < 0.4:
            r = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": p},
                              {"role": "assistant", "content": text(3)}, {"role": "user", "content": "and?"},
                              {"role": "assistant", "content": text(4)}], "rating": 5}
        elif k < 0.42:
            r = {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": {"a": 1.5e16, "b": "x"}}}]},
                {"role": "tool", "content": "42", "tool_call_id": "1"}, {"role": "assistant", "content": "It is 42."}]}
        elif k < 0.44:
            r["meta"] = {"n": rnd.choice([1, 2**70, 3.25, "s", None, True]), "nested": {"k": [1, "two"]}}
        if rnd.random() < 0.9:
            r["created_at"] = (f"2024-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:"
                               f"{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}{rnd.choice(ZONES)}")
        r["agent"] = rnd.choice([None, "support", "sales"])
        if rnd.random() < 0.3:
            r["served_model"] = rnd.choice(["assistant@v1.0", "other", ""])
        out.append(r)
    return out


# SHA-256 (first 16 hex) of each file, as the code before the speed-ups wrote them
PINNED = {
    "full": {"counts": [601, 204, 79, 110],
        "preferences.jsonl": "5e8bce616e839400", "rejects.jsonl": "9c809cb7b693bba4", "seen.jsonl": "4d15cf6276e0c662",
        "test.jsonl": "d54606c10b8478f9", "train.jsonl": "417a739ea529a2bb", "unpaired.jsonl": "544ca10600bf6cad",
        "val.jsonl": "ccb778350d13ce02"},
    "incremental": {"counts": [1105, 218, 92, 131],
        "preferences.jsonl": "a1b841503354dcd4", "rejects.jsonl": "48ec62f78ac9adad", "seen.jsonl": "3c6d6fbe39609618",
        "test.jsonl": "e7565947370f0130", "train.jsonl": "9a9c4a57db26eb4d", "unpaired.jsonl": "7da0b8cf5a0c4442",
        "val.jsonl": "460599f1cf5d1aca"},
    "rebuild": {"counts": [901, 150, 61, 74],
        "preferences.jsonl": "be4421a976904fb1", "rejects.jsonl": "48ec62f78ac9adad", "seen.jsonl": "b0f81ec2e5b5ba4f",
        "test.jsonl": "35ce1c92e7ff496a", "train.jsonl": "f5e9c9750c5b2226", "unpaired.jsonl": "b0f8ca073634c550",
        "val.jsonl": "cc7f801b7ea28cce"},
}


def test_snapshots_are_byte_for_byte_what_they_were(workspace, monkeypatch):
    import ftctl.data.collect as collect_module
    from ruamel.yaml import YAML

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)

    monkeypatch.setattr(collect_module, "datetime", Clock)
    ws, rnd = workspace, random.Random(11)
    feedback = ws.root / "feedback"
    write_jsonl(feedback / "a.jsonl", [json.dumps(r, ensure_ascii=rnd.random() < 0.5).encode() + b"\n"
                                       for r in rows(rnd, 600)] + [b"{oops\n", b"\n"])

    def setup(curate):
        configure(ws, [{"name": "ev", "kind": "jsonl", "path": "feedback/*.jsonl"}], curate)
        yaml = YAML(typ="safe")
        data = yaml.load(ws.config_path.read_text())
        data["train"] = {"trainer": "lora", "lora": {"chat_template": TOOL_TEMPLATE}}
        with open(ws.config_path, "w") as f:
            yaml.dump(data, f)
        ws.__dict__.pop("loaded", None)

    got = {}

    def snapshot(step, **kw):
        r = collect_module.collect(ws, log=lambda s: None, **kw)
        folder = ws.data_dir("assistant")
        card = json.loads((folder / "card.json").read_text())
        assert {k: card[k] for k in ("read", "kept", "filtered", "rejected", "preferences", "unpaired")} == \
            {k: r[k] for k in ("read", "kept", "filtered", "rejected", "preferences", "unpaired")}
        got[step] = {"counts": [r["read"], r["kept"], r["preferences"], r["unpaired"]], **{
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.iterdir()) if p.suffix == ".jsonl"}}

    setup({"min_rating": 4, "max_tokens": 60, "min_tokens": 2})
    snapshot("full")
    write_jsonl(feedback / "b.jsonl", [json.dumps(r).encode() + b"\n" for r in rows(rnd, 300, 1000)])
    snapshot("incremental")
    setup({"dedup": "exact", "conflict": "latest", "limit": 150, "min_reward": 0, "agent_types": ["support", "sales"]})
    snapshot("rebuild", since="all")
    assert got == PINNED
