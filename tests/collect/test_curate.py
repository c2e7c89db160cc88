"""Curation rules as pure functions: split, dedup, conflicts, corrections, filters, golden set."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from ftctl.data import curate
from ftctl.config import CurateConfig
from ftctl.errors import ConfigError
from ftctl.records import Example

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def ex(prompt="q", answer="a", i=0, **kw) -> Example:
    return Example(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                   source="s", source_id=str(i), **kw)


def test_split_is_stable_and_roughly_proportional():
    keys = [f"conv-{i}" for i in range(4000)]
    first = [curate.split_of(k, "salt", 0.1, 0.2) for k in keys]
    assert first == [curate.split_of(k, "salt", 0.1, 0.2) for k in reversed(keys)][::-1]
    c = Counter(first)
    assert 0.17 < c["test"] / 4000 < 0.23 and 0.07 < c["val"] / 4000 < 0.13
    # a new salt reshuffles; growing val never moves an example out of test
    assert first != [curate.split_of(k, "other", 0.1, 0.2) for k in keys]
    grown = [curate.split_of(k, "salt", 0.3, 0.2) for k in keys]
    assert all(g == "test" for f, g in zip(first, grown) if f == "test")


@pytest.mark.parametrize("val,test", [(0.1, 0.2), (0.05, 0.05), (0.0, 0.0), (0.3, 0.0), (1 / 3, 1 / 7)])
def test_the_split_is_the_documented_hash(val, test):
    """u = the first 8 bytes of sha256(salt NUL key), big-endian, / 2**64: test below ``test``,
    val below ``test + val``. Snapshots depend on it: a key never moves."""
    import hashlib

    def reference(key):
        u = int.from_bytes(hashlib.sha256(b"salt\x00" + key.encode()).digest()[:8], "big") / 2**64
        return "test" if u < test else "val" if u < test + val else "train"

    split = curate.Splitter("salt", val, test)
    keys = [f"conv-{i}" for i in range(3000)] + ["", "é", "x" * 500]
    assert [split(k) for k in keys] == [reference(k) for k in keys]


def test_correction_replaces_the_answer_and_keeps_the_original():
    e, original = curate.apply_correction(ex("q", "wrong", correction="right", rating=1))
    assert e.response == "right" and original == "wrong" and e.meta["corrected"]
    assert curate.negative_reason(e, CurateConfig(min_rating=4)) is None  # corrections win
    same, none = curate.apply_correction(ex())
    assert none is None and same.response == "a"


@pytest.mark.parametrize("kw,reason", [
    ({"rating": 2}, "min_rating"), ({"reward": -0.5}, "min_reward"),
    ({"feedback_type": "thumbs_down", "rating": 5}, "negative_feedback"),
    ({"rating": 4, "reward": 0.9}, None), ({}, None),
])
def test_negative_feedback(kw, reason):
    assert curate.negative_reason(ex(**kw), CurateConfig(min_rating=4, min_reward=0.0)) == reason


def test_filters_window_agent_tokens_golden():
    cfg = CurateConfig(days_back=30, agent_types=["support"], min_tokens=3, max_tokens=10)
    f = curate.Filters(cfg, lambda t: len(t.split()), NOW, golden={curate.prompt_key(ex("secret q"))})
    recent = NOW - timedelta(days=1)
    assert f.reason(ex("a b", "c d", created_at=NOW - timedelta(days=40), agent="support"))[0] == "window"
    assert f.reason(ex("a b", "c d", agent="support"))[0] == "window"  # no time, window set
    assert f.reason(ex("a b", "c d", created_at=recent, agent="sales"))[0] == "agent_type"
    assert f.reason(ex("a", "b", created_at=recent, agent="support"))[0] == "min_tokens"
    assert f.reason(ex("a " * 8, "b " * 8, created_at=recent, agent="support"))[0] == "max_tokens"
    assert f.reason(ex("Secret  Q", "x y z", created_at=recent, agent="support"))[0] == "golden"
    assert f.reason(ex("a b", "c d", created_at=recent, agent="support")) == (None, 4)


def test_bad_window_is_a_config_error():
    with pytest.raises(ConfigError, match="window_start"):
        curate.window(CurateConfig(window_start="last tuesday"), NOW)


def test_whitespace_token_approximation():
    count, how = curate.token_counter(None)
    assert how.startswith("whitespace") and count("one two three") == 4 and count("") == 0


@pytest.mark.parametrize("texts", [("one two", "three"), ("", ""), ("", "a"), ("  a\tb  ", "\nc\u2028d\u3000e "),
                                   ("end-", "-start"), ("x" * 9, " "), ("a b c", "d", "e f", "")])
def test_filters_count_the_joined_text(texts):
    """The default count, summed message by message, equals the count of the newline-joined text."""
    count, _ = curate.token_counter(None)
    f = curate.Filters(CurateConfig(min_tokens=None, max_tokens=None), count, NOW)
    # ending on a user turn: a blank final answer is the empty_answer filter's
    e = Example(messages=[{"role": r, "content": t} for r, t in zip(["assistant", "user"] * 2, texts)])
    assert f.reason(e) == (None, count("\n".join(texts)))


@pytest.mark.parametrize("answer", ["", " ", "\n\t"])
def test_a_blank_answer_is_never_a_target_and_a_disliked_one_stays_a_negative(answer):
    f = curate.Filters(CurateConfig(min_rating=4), curate.token_counter(None)[0], NOW)
    assert f.reason(ex("q", answer))[0] == "empty_answer"
    assert f.reason(ex("q", answer, rating=5))[0] == "empty_answer"
    assert f.reason(ex("q", answer, rating=1))[0] == "min_rating"  # kept aside: DPO/KTO learn against it
    calls = Example(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": answer, "tool_calls": [
        {"type": "function", "function": {"name": "lookup", "arguments": {"id": 1}}}]}])
    assert f.reason(calls)[0] is None  # a tool call is an answer


def spill_of(tmp_path, rows, dedup="normalized", conflict="best_rating"):
    tmp_path.mkdir(exist_ok=True)
    s = curate.Spill(tmp_path, curate.Splitter("salt", 0.1, 0.1), dedup)
    for e, neg in rows:
        s.add(e, neg=neg, tokens=3)
    s.resolve(conflict)
    out = [(e.source_id, status) for (e, _), status in zip(rows, s.statuses())]
    answers = {(e.prompt, e.response): e.source_id for e, neg in reversed(rows) if neg}  # the first one's id
    pairs = [(a.source_id, answers[a.prompt, b]) for a, b in s.negatives_for_kept()]
    s.close()
    return dict(out), pairs


def test_dedup_exact_and_normalized(tmp_path):
    rows = [(ex("Hello  World", "A", i=1), None), (ex("hello world", "a", i=2), None), (ex("Hello  World", "A", i=3), None)]
    assert spill_of(tmp_path / "n", rows)[0] == {"1": "kept", "2": "duplicate", "3": "duplicate"}
    # exact: 2 differs in case only, so it stays (and is no conflict: the same answer, folded)
    assert spill_of(tmp_path / "e", rows, dedup="exact")[0] == {"1": "kept", "2": "kept", "3": "duplicate"}
    assert spill_of(tmp_path / "o", rows, dedup="off")[0] == {"1": "kept", "2": "kept", "3": "kept"}


@pytest.mark.parametrize("rule,expected", [
    ("best_rating", {"1": "conflict", "2": "kept", "3": "conflict"}),
    ("latest", {"1": "conflict", "2": "conflict", "3": "kept"}),
    ("drop", {"1": "conflict", "2": "conflict", "3": "conflict"}),
])
def test_conflicting_answers_resolved_by_rule(tmp_path, rule, expected):
    t = NOW - timedelta(days=3)
    rows = [(ex("q", "one", i=1, rating=4, created_at=t), None),
            (ex("q", "two", i=2, rating=5, created_at=t + timedelta(days=1)), None),
            (ex("q", "three", i=3, rating=4, created_at=t + timedelta(days=2)), None),
            (ex("other", "x", i=4), None)]
    statuses, _ = spill_of(tmp_path / rule, rows, conflict=rule)
    assert statuses == {**expected, "4": "kept"}


def test_negatives_become_preference_pairs(tmp_path):
    rows = [(ex("q", "good", i=1, rating=5), None), (ex("q", "bad", i=2, rating=1), "min_rating"),
            (ex("q", "bad", i=3, rating=1), "min_rating"), (ex("z", "bad", i=4, rating=1), "min_rating")]
    statuses, pairs = spill_of(tmp_path, rows)
    assert statuses == {"1": "kept", "2": "min_rating", "3": "min_rating", "4": "min_rating"}
    assert pairs == [("1", "2")]  # one pair per distinct bad answer; no good answer for "z"


def test_golden_file(tmp_path):
    p = tmp_path / "golden.jsonl"
    p.write_text(json.dumps({"prompt": "Q1", "conversation_id": "g1"}) + "\n\n"
                 + json.dumps(ex("q2", "a").to_dict()) + "\n")
    keys, n = curate.golden_keys(p)
    assert n == 2 and "g1" in keys and curate.prompt_key(ex("q2", "other")) in keys
    p.write_text("not json\n")
    with pytest.raises(ConfigError, match="golden.jsonl:1"):
        curate.golden_keys(p)
    with pytest.raises(ConfigError, match="does not exist"):
        curate.golden_keys(tmp_path / "missing.jsonl")


def test_spill_unpaired_limit_and_figures(tmp_path):
    """Each disliked answer once (not one also liked for its prompt), the limit in input order, the
    card's figures from the kept rows only; lines are written as spilled."""
    rows = [(ex("q", "good", i=1, rating=5, agent="a"), None), (ex("q", "bad", i=2, rating=1), "min_rating"),
            (ex("Q", " BAD ", i=3, rating=2), "min_rating"),  # the same disliked answer, folded: once
            (ex("q", "good", i=4, rating=1), "min_rating"),  # liked and disliked at once: not unpaired
            (ex("r", "x", i=5, rating=4, agent="a"), None), (ex("s", "y", i=6, served_model="m@v1.0"), None)]
    s = curate.Spill(tmp_path, curate.Splitter("salt", 0.0, 0.0), "normalized")
    for e, neg in rows:
        s.add(e, neg=neg, tokens=40)
    s.resolve("best_rating", limit=2)
    assert s.statuses() == ["kept", "min_rating", "min_rating", "min_rating", "kept", "limit"]
    assert s.filtered() == {"min_rating": 3, "limit": 1}
    figures = s.kept()
    assert figures["split"] == {"train": 2} and figures["rating"] == {5.0: 1, 4.0: 1}
    assert figures["agent"] == {"a": 2} and figures["tokens"] == {curate.bin_of(40): 2} and figures["served"] == {None: 2}
    train, val, test, unpaired = (tmp_path / n for n in ("train", "val", "test", "unpaired"))
    with open(train, "wb") as t, open(val, "wb") as v, open(test, "wb") as te, open(unpaired, "wb") as u:
        assert s.write({"train": t, "val": v, "test": te}, u) == (2, 1)
    assert [Example.from_json(x).source_id for x in train.read_bytes().splitlines()] == ["1", "5"]
    from ftctl.registry import seen

    assert s.train_ids() == list(seen.ids(train))  # the ledger's ids, taken as the rows were spilled
    (bad,) = [json.loads(x) for x in unpaired.read_bytes().splitlines()]
    assert bad["completion"] == [{"role": "assistant", "content": "bad"}] and bad["from"] == "min_rating"
    assert [(g.source_id, b) for g, b in s.negatives_for_kept()] == [("1", "bad")]  # one per distinct answer
    s.close()


@pytest.mark.parametrize("created", [
    None, datetime(2024, 5, 1, 12, 30), datetime(2024, 5, 1, 12, 30, 1, 5, tzinfo=timezone.utc),
    datetime(2024, 5, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2024, 5, 1, tzinfo=timezone(timedelta(seconds=1172))),  # an LMT offset: orjson would drop its seconds
    datetime(1850, 1, 1, tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Paris")),
])
@pytest.mark.parametrize("extra", [{}, {"meta": {"at": datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=61)))}},
                                   {"tools": [{"type": "function", "function": {"name": "f"}}]}])
def test_a_snapshot_line_writes_times_as_isoformat(created, extra):
    line = json.loads(ex("q \u2028 \x01 é", "a \"quoted\"", created_at=created, **extra).to_json())
    assert line["created_at"] == (created.isoformat() if created else None)
    assert line["messages"][0]["content"] == "q \u2028 \x01 é" and line["messages"][1]["content"] == 'a "quoted"'
    if "meta" in extra:
        assert line["meta"]["at"] == extra["meta"]["at"].isoformat()


@pytest.mark.parametrize("row", [
    {"messages": [{"role": "user", "content": "q \u2028 \x01 é \"x\" \\ 😀"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}], "correction": "right\n"},
    {"messages": []}, {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
    {"messages": [{"content": "q", "role": "user", "name": "n"}]}, {"messages": [{"role": "user", "content": None}]},
])
def test_the_first_seen_id_hashes_the_rows_json(row):
    import hashlib

    from ftctl.registry import seen

    text = json.dumps([row.get("messages"), row.get("correction")], sort_keys=True, ensure_ascii=False)
    assert seen.row_id(row) == hashlib.sha256(text.encode()).hexdigest()[:24]


class _Text(str):
    pass


@pytest.mark.parametrize("messages, correction", [
    ([{"role": "user", "content": "q \u2028 é 😀"}, {"role": "assistant", "content": "a"}], None),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "right\n"),
    (({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}), None),  # a tuple: read back a list
    ([{"role": "user", "content": _Text("q")}, {"role": "assistant", "content": "a"}], _Text("c")),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}], None),
])
def test_the_ledger_id_taken_while_spilling_is_the_written_lines(messages, correction):
    """collect takes the ledger's ids from the rows in memory: the same as from their lines."""
    from ftctl.registry import seen

    line = Example(messages=messages, correction=correction).to_json()
    assert seen.line_digest(messages, correction, line).hex() == seen.row_id(json.loads(line))
