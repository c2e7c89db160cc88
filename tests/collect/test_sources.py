"""File and SQLite sources: every bad row is rejected with its place and reason, nothing else."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ftctl import plugins
from ftctl.errors import ConfigError, ExternalToolError
from ftctl.kinds import Context
from ftctl.records import Example, Reject
from tests.collect.conftest import event, write_jsonl


def read_all(kind, cfg, root, since=None):
    ctx = Context(root=root, model="m", cache_dir=root, instance="src")
    src = plugins.build("source", kind, cfg, ctx, key="sources[0]")
    items = list(src.read(since))
    return ([i for i in items if isinstance(i, Example)], [i for i in items if isinstance(i, Reject)],
            src.watermark())


def reasons(rejects):
    return {r.where.rsplit(":", 1)[-1]: r.reason for r in rejects}


def test_jsonl_bad_lines_are_rejected_with_file_and_line(tmp_path):
    good = event("What is 2+2?", "4", rating=5, created_at="2024-03-01T10:00:00Z")
    write_jsonl(tmp_path / "fb.jsonl", [
        b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\n",  # 1: BOM, fine
        b'{"prompt": "cut', b"\n",  # 2: truncated
        b"{not json}\n",  # 3
        b'{"prompt": "caf\xe9", "response": "x"}\n',  # 4: latin-1, not UTF-8
        event("q", None),  # 5: no response
        event("q", "a", rating="five"),  # 6
        event("q", "a", rating=9),  # 7
        event("q", "a", reward=2),  # 8
        event("q", "a", created_at="not a date"),  # 9
        b"\n",  # blank: not a row
        [1, 2],  # 11
        {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]},  # 12
        event("q", "a", feedback_type="Thumbs Down"),  # 13: fine
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},  # 14: OpenAI
        {"prompt": "p", "completion": "c"},  # 15: prompt/completion
        event("q", "a", created_at="03/02/2024 09:30"),  # 16: another format
        event("q", "a", created_at=1709371800),  # 17: epoch seconds
    ])
    examples, rejects, wm = read_all("jsonl", {"path": "fb.jsonl"}, tmp_path)
    assert reasons(rejects) == {"2": "truncated_json", "3": "invalid_json", "4": "invalid_utf8",
                                "5": "missing_field:response", "6": "wrong_type:rating", "7": "rating_out_of_range",
                                "8": "reward_out_of_range", "9": "bad_timestamp", "11": "not_an_object",
                                "12": "unknown_role"}
    assert all(r.where.startswith("fb.jsonl:") for r in rejects)
    assert [e.source_id for e in examples] == [f"fb.jsonl:{n}" for n in (1, 13, 14, 15, 16, 17)]
    assert examples[0].rating == 5 and examples[0].prompt == "What is 2+2?" and examples[0].source == "src"
    assert examples[1].feedback_type == "thumbs_down"
    assert examples[3].response == "c"
    assert all(e.created_at.tzinfo for e in examples if e.created_at)
    assert examples[4].created_at.month == 3 and examples[5].created_at.year == 2024
    assert wm == "2024-03-02T09:30:00+00:00"


def test_jsonl_huge_line_is_rejected_without_loading_it(tmp_path):
    big = b'{"prompt": "' + b"x" * (50 << 20) + b'", "response": "y"}\n'
    write_jsonl(tmp_path / "big.jsonl", [big, event("q", "a")])
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    examples, rejects, _ = read_all("jsonl", {"path": "big.jsonl", "max_line_bytes": 1 << 20}, tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert [r.reason for r in rejects] == ["line_too_long"] and rejects[0].where == "big.jsonl:1"
    assert len(examples) == 1 and examples[0].source_id == "big.jsonl:2"
    assert grown_mb < 30  # read in 1 MB pieces, never the 50 MB line


def test_jsonl_empty_and_missing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert read_all("jsonl", {"path": "empty.jsonl"}, tmp_path)[:2] == ([], [])
    with pytest.raises(ConfigError, match="no files match"):
        read_all("jsonl", {"path": "nothing/*.jsonl"}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        read_all("jsonl", {"path": "empty.jsonl", "bogus": 1}, tmp_path)


def test_csv_templates_ragged_rows_and_unknown_columns(tmp_path):
    (tmp_path / "claims.csv").write_text(
        "claim_id,description,decision,score,reviewer,decided_at\n"
        "C1,Water damage in kitchen,Approved: covered peril,5,adj,2024-01-05\n"
        "C2,Hail on roof,Denied,7,adj,2024-01-06\n"
        "C3,Short row\n"
        "C4,Fire,Approved,4,adj,2024-01-07,EXTRA\n"
        "C5,Theft,Approved,,adj,05/01/2024\n", encoding="utf-8")
    cfg = {"path": "claims.csv", "prompt": "Claim {claim_id}: {description}. Decision?", "response": "{decision}",
           "id": "claim_id", "rating": "score", "agent": "reviewer", "created_at": "decided_at"}
    examples, rejects, _ = read_all("csv", cfg, tmp_path)
    assert {r.where: r.reason for r in rejects} == {"claims.csv:C2": "rating_out_of_range",
                                                    "claims.csv:C3": "ragged_row", "claims.csv:C4": "ragged_row"}
    assert [e.prompt for e in examples] == ["Claim C1: Water damage in kitchen. Decision?", "Claim C5: Theft. Decision?"]
    assert examples[0].rating == 5 and examples[0].agent == "adj" and examples[1].rating is None
    with pytest.raises(ConfigError, match="no column.*notes"):
        read_all("csv", {**cfg, "response": "{decision} {notes}"}, tmp_path)


def test_documents_continuation_and_qa(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "guide.md").write_text("# Install\n\n" + "Run the installer and follow the prompts. " * 6
                                + "\n\n# Tiny\n\nToo short.\n")
    (d / "notes.txt").write_text("Plain text notes about the system. " * 10)
    (d / "bin.dat").write_bytes(b"\x00\x01")  # not a document suffix: ignored
    examples, rejects, _ = read_all("documents", {"path": "docs", "style": "qa"}, tmp_path)
    assert [r.reason for r in rejects] == ["too_short"] and rejects[0].where == "docs/guide.md#2"
    assert examples[0].prompt == "What does guide say about Install?"
    assert examples[0].response.startswith("Run the installer")
    cont, _, _ = read_all("documents", {"path": "docs"}, tmp_path)
    full = "Plain text notes about the system. " * 10
    e = next(x for x in cont if x.source_id.startswith("docs/notes.txt"))
    assert e.prompt.startswith("Continue this passage from notes") and e.response and e.response in full


def sample_db(path):
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE msgs (id INTEGER PRIMARY KEY, conv TEXT, role TEXT, content TEXT, agent TEXT, at TEXT);
        CREATE TABLE fb (message_id INTEGER, score INTEGER);
        INSERT INTO msgs VALUES (1,'a','user','Hi?','bot','2024-01-01T00:00:00'),
                                (2,'a','assistant','Hello!','bot','2024-01-01T00:00:01'),
                                (3,'a','user','Bye?','bot','2024-01-01T00:00:02'),
                                (4,'a','assistant','Goodbye!','bot','2024-01-01T00:00:03'),
                                (5,'b','assistant','No question','bot','2024-01-02T00:00:00'),
                                (6,'c','user','Q','other','2024-01-03T00:00:00'),
                                (7,'c','assistant',NULL,'other','2024-01-03T00:00:01');
        INSERT INTO fb VALUES (2, 5), (4, 9);
    """)
    db.commit()
    db.close()


def test_sqlite_table_mapping_groups_conversations(tmp_path):
    sample_db(tmp_path / "fb.sqlite")
    cfg = {"path": "fb.sqlite", "table": "msgs", "conversation_id": "conv", "created_at": "at", "agent": "agent",
           "feedback_table": "fb", "rating": "score"}
    examples, rejects, wm = read_all("sqlite", cfg, tmp_path)
    assert {r.where: r.reason for r in rejects} == {"msgs:id=4": "rating_out_of_range",
                                                    "msgs:id=5": "missing_field:user_message",
                                                    "msgs:id=7": "missing_field:content"}
    assert len(examples) == 1 and examples[0].rating == 5 and examples[0].conversation_id == "src:a"
    assert wm == "2024-01-03T00:00:01+00:00"
    # incremental: only rows after the watermark
    later, _, _ = read_all("sqlite", cfg, tmp_path, since="2024-01-01T00:00:01")
    assert later == []


def test_sqlite_injection_in_filter_values_and_identifiers(tmp_path):
    sample_db(tmp_path / "fb.sqlite")
    base = {"path": "fb.sqlite", "table": "msgs", "conversation_id": "conv", "created_at": "at", "rating": None}
    examples, _, _ = read_all("sqlite", {**base, "where": {"agent": "bot' OR '1'='1"}}, tmp_path)
    assert examples == []  # bound as a value: matches nothing
    with pytest.raises(ExternalToolError, match="no such column"):
        read_all("sqlite", {**base, "where": {"agent = agent; DROP TABLE msgs; --": "x"}}, tmp_path)
    assert sqlite3.connect(tmp_path / "fb.sqlite").execute("SELECT COUNT(*) FROM msgs").fetchone() == (7,)


def test_sqlite_query_mode_and_read_only(tmp_path):
    sample_db(tmp_path / "fb.sqlite")
    q = ("SELECT id, conv AS conversation_id, role, content, at AS created_at FROM msgs "
         "WHERE agent = :agent")
    examples, _, _ = read_all("sqlite", {"path": "fb.sqlite", "query": q, "params": {"agent": "bot"}, "rating": None},
                              tmp_path)
    assert [e.response for e in examples] == ["Hello!", "Goodbye!"]
    assert examples[1].messages[0]["content"] == "Hi?"  # the turns before it are the context
    with pytest.raises(ExternalToolError, match="syntax error"):  # wrapped as a subquery: only a SELECT runs
        read_all("sqlite", {"path": "fb.sqlite", "query": "DELETE FROM msgs RETURNING *", "rating": None}, tmp_path)
    assert sqlite3.connect(tmp_path / "fb.sqlite").execute("SELECT COUNT(*) FROM msgs").fetchone() == (7,)
    with pytest.raises(ConfigError, match="exactly one of"):
        read_all("sqlite", {"path": "fb.sqlite"}, tmp_path)
    with pytest.raises(ConfigError, match="no SQLite database"):
        read_all("sqlite", {"path": "nope.sqlite", "table": "msgs"}, tmp_path)
