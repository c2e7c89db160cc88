"""The postgres source against the real local server: mapping, join, NULLs, watermark, safety."""

from __future__ import annotations

import uuid

import pytest

from ftctl.errors import ExternalToolError
from tests.collect.test_sources import read_all

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_table(pg_dsn):
    """A scratch schema with a messages table and a joined feedback table; dropped afterwards."""
    import psycopg

    schema = f"ftctl_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'''CREATE TABLE "{schema}".messages (id bigint PRIMARY KEY, conversation_id text, role text,
                         content text, agent text, created_at timestamptz)''')
        conn.execute(f'CREATE TABLE "{schema}".feedback (message_id bigint, rating int, feedback_type text, correction text)')
        rows = [(1, "a", "user", "Hi?", "bot", "2024-01-01 00:00:00+00"),
                (2, "a", "assistant", "Hello!", "bot", "2024-01-01 00:00:01+00"),
                (3, "b", "user", "Weather?", "bot", "2024-01-02 00:00:00+00"),
                (4, "b", "assistant", None, "bot", "2024-01-02 00:00:01+00"),  # NULL content
                (5, "c", "user", "Tax?", "other", "2024-01-03 00:00:00+00"),
                (6, "c", "assistant", "Ask an accountant.", "other", "2024-01-03 00:00:01+00"),
                (7, "d", None, "orphan", "bot", "2024-01-04 00:00:00+00")]  # NULL role
        with conn.cursor() as cur:
            cur.executemany(f'INSERT INTO "{schema}".messages VALUES (%s,%s,%s,%s,%s,%s)', rows)
            cur.executemany(f'INSERT INTO "{schema}".feedback VALUES (%s,%s,%s,%s)',
                            [(2, 5, "thumbs_up", None), (6, 2, "correction", "It depends on your country.")])
    yield pg_dsn, schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def cfg(dsn, schema, **kw):
    return {"dsn": dsn, "table": f"{schema}.messages", "feedback_table": f"{schema}.feedback", "agent": "agent",
            "feedback_type": "feedback_type", "correction": "correction", **kw}


def test_table_mapping_with_feedback_join_and_nulls(tmp_path, pg_table):
    dsn, schema = pg_table
    examples, rejects, wm = read_all("postgres", cfg(dsn, schema), tmp_path)
    assert {r.where: r.reason for r in rejects} == {"%s.messages:id=4" % schema: "missing_field:content",
                                                    "%s.messages:id=7" % schema: "missing_field:role"}
    assert [(e.prompt, e.response, e.rating) for e in examples] == [("Hi?", "Hello!", 5),
                                                                   ("Tax?", "Ask an accountant.", 2)]
    assert examples[1].correction == "It depends on your country." and examples[1].agent == "other"
    assert examples[0].created_at.tzinfo and wm == "2024-01-04T00:00:00+00:00"
    # the next run reads only newer rows
    later, rejects2, _ = read_all("postgres", cfg(dsn, schema), tmp_path, since="2024-01-02T12:00:00+00:00")
    assert [e.response for e in later] == ["Ask an accountant."] and len(rejects2) == 1


def test_query_mode_with_named_parameters(tmp_path, pg_table):
    dsn, schema = pg_table
    q = (f'SELECT m.id, m.conversation_id, m.role, m.content, m.created_at, f.rating FROM "{schema}".messages m '
         f'LEFT JOIN "{schema}".feedback f ON f.message_id = m.id WHERE m.agent = %(agent)s')
    examples, rejects, _ = read_all("postgres", {"dsn": dsn, "query": q, "params": {"agent": "other"}}, tmp_path)
    assert [e.response for e in examples] == ["Ask an accountant."] and rejects == []


def test_injection_in_filter_values_is_just_a_value(tmp_path, pg_table, pg_dsn):
    import psycopg

    dsn, schema = pg_table
    evil = "bot'; DROP TABLE %s.messages; --" % schema
    examples, _, _ = read_all("postgres", cfg(dsn, schema, where={"agent": evil}), tmp_path)
    assert examples == []
    with pytest.raises(ExternalToolError, match="does not exist"):  # an identifier is quoted, not spliced
        read_all("postgres", cfg(dsn, schema, where={"agent = agent; DROP TABLE x; --": 1}), tmp_path)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(f'SELECT COUNT(*) FROM "{schema}".messages').fetchone() == (7,)


def test_never_writes(tmp_path, pg_table):
    dsn, schema = pg_table
    q = f'WITH d AS (DELETE FROM "{schema}".feedback RETURNING message_id AS id) SELECT * FROM d'
    with pytest.raises(ExternalToolError):  # read-only transaction (and a subquery cannot hold a DELETE)
        read_all("postgres", {"dsn": dsn, "query": q}, tmp_path)


def test_unreachable_database_names_no_password(tmp_path):
    dsn = "postgresql://postgres:s3cretpw@127.0.0.1:1/test"
    with pytest.raises(ExternalToolError) as e:
        read_all("postgres", {"dsn": dsn, "table": "messages", "connect_timeout": 2}, tmp_path)
    assert "cannot connect" in e.value.message and "s3cretpw" not in e.value.message + (e.value.hint or "")


def test_a_query_returning_no_rows(tmp_path, pg_table):
    dsn, schema = pg_table
    examples, rejects, wm = read_all("postgres", cfg(dsn, schema, where={"agent": "nobody"}), tmp_path)
    assert (examples, rejects, wm) == ([], [], None)


@pytest.fixture
def interactions(pg_dsn):
    """One row per interaction, every mapped column filled (reward, served model, a bad rating)."""
    import psycopg

    schema = f"ftctl_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'''CREATE TABLE "{schema}".chats AS SELECT g AS id, 'c' || (g / 2) AS conv, 'q' || g AS q,
                         'a' || g AS a, CASE WHEN g = 7 THEN 9 ELSE 1 + g %% 5 END AS stars,
                         (g %% 3 - 1) * 0.5 AS reward, 'Thumbs Down' AS ft, 'bot' AS agent, 'm@v1.' || (g %% 2) AS served,
                         timestamptz '2024-01-01' + g * interval '1 minute' AS t
                         FROM generate_series(1, %s) g''', (12000,))
    yield pg_dsn, schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def chats(dsn, schema, **kw):
    return {"dsn": dsn, "table": f"{schema}.chats", "conversation_id": "conv", "prompt": "q", "response": "a",
            "rating": "stars", "reward": "reward", "feedback_type": "ft", "agent": "agent", "served_model": "served",
            "created_at": "t", "itersize": 1000, **kw}


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-stream", "server-side-cursor"])
def test_interactions_every_field_streamed_in_chunks(tmp_path, interactions, chunked, monkeypatch):
    """Every mapped field lands in its Example field (they are built positionally), over several
    chunks; the server-side cursor (libpq < 17) reads the same."""
    import psycopg

    if not chunked:
        monkeypatch.setattr(psycopg.capabilities, "has_stream_chunked", lambda: False)
    dsn, schema = interactions
    examples, rejects, wm = read_all("postgres", chats(dsn, schema), tmp_path)
    assert len(examples) == 11999 and [(r.where, r.reason) for r in rejects] == [
        (f"{schema}.chats:id=7", "rating_out_of_range")]
    e = examples[0]
    assert (e.messages, e.source, e.source_id, e.conversation_id) == (
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}], "src", f"{schema}.chats:id=1", "src:c0")
    assert (e.rating, e.reward, e.feedback_type, e.correction, e.agent, e.served_model) == (
        2.0, 0.0, "thumbs down", None, "bot", "m@v1.1")
    assert e.created_at.isoformat() == "2024-01-01T00:01:00+00:00" and wm == "2024-01-09T08:00:00+00:00"


def test_a_stream_left_early_ends_cleanly(tmp_path, interactions):
    """collect may stop reading (an error further on): the query is cancelled, the connection closed."""
    from ftctl import plugins
    from ftctl.kinds import Context

    dsn, schema = interactions
    src = plugins.build("source", "postgres", chats(dsn, schema), Context(root=tmp_path, model="m", cache_dir=tmp_path,
                                                                         instance="src"), key="sources[0]")
    rows = src.read(None)
    assert [next(rows).source_id for _ in range(3)] == [f"{schema}.chats:id={i}" for i in (1, 2, 3)]
    rows.close()  # no error: the stream is cancelled before the transaction ends
    assert len(read_all("postgres", chats(dsn, schema), tmp_path)[0]) == 11999  # and the next read is whole


NASTY = ["tab\there", "new\nline", "cr\r\nlf", "back\\slash \\N \\t", 'quote" and \'', "emoji😀 日本語 עברית", "x\u2028y",
         "ctl\x01\x1f", "  spaced  ", "NULL", "\\N", ",;|"]
TIMES = ["0001-01-02 00:00:00+00", "1850-01-01 00:00:00+00", "2024-01-01 00:00:00.123456+05:30",  # ascending
         "2024-03-31 01:30:00+00", "2024-07-01 12:00:00.5-03:30", None]


@pytest.fixture
def nasty(pg_dsn):
    """Rows with every awkward value in every mapped column: tabs, newlines, backslashes, quotes,
    unicode, NULLs, blanks, times in odd zones and none, a bad rating."""
    import psycopg

    schema = f"ftctl_test_{uuid.uuid4().hex[:8]}"
    rows = []
    for i in range(60):
        s = NASTY[i % len(NASTY)]
        rows.append((i + 1, None if i % 17 == 0 else f"c{i // 3} {NASTY[i // 3 % len(NASTY)]}", ["user", "assistant", "assistant"][i % 3],
                     s if i % 11 else None, f"q {s} {i}", s if i % 13 else "   ", (i % 7) - 1 if i % 9 else None,
                     None if i % 4 else (i % 5 - 2) / 10, None if i % 4 else i % 3 - 1, None if i % 5 else " Thumbs Up ",
                     s if i % 6 == 0 else None,
                     s if i % 2 else None, s if i % 8 == 0 else ("" if i % 8 == 1 else None),
                     TIMES[i % 3 + i // 3 % 4]))  # a conversation's turns in order: user, assistant, assistant
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'''CREATE TABLE "{schema}".t (id bigint PRIMARY KEY, conv text, role text, content text, q text,
                         a text, stars int, reward real, reward_i int, ft text, corr text, agent text, served text,
                         at timestamptz)''')
        with conn.cursor().copy(f'COPY "{schema}".t FROM STDIN') as cp:
            for r in rows:
                cp.write_row(r)
        conn.execute(f'CREATE TYPE "{schema}".role AS ENUM (\'user\', \'assistant\')')
        conn.execute(f'ALTER TABLE "{schema}".t ADD COLUMN role_e "{schema}".role')
        conn.execute(f'UPDATE "{schema}".t SET role_e = role::"{schema}".role')
    yield pg_dsn, schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _old_path(dsn: str, cfg: dict) -> tuple[list, str | None]:
    """What the source read before its speed-ups: the mapped query through psycopg's defaults
    (its timestamptz loader, the session's own zone), all rows at once, into RowsToExamples."""
    import psycopg
    from psycopg import sql

    from ftctl_plugins.sources.postgres import PostgresSource
    from ftctl_plugins.sources.sql import RowsToExamples, build_query

    c = PostgresSource.Config(**cfg)
    with psycopg.connect(dsn) as conn:
        query, params = build_query(c, lambda n: sql.Identifier(n).as_string(conn), lambda n: f"%({n})s", None)
        cur = conn.execute(query, params)
        to_examples = RowsToExamples(c, "src", c.table or "query")
        return list(to_examples(cur.fetchall(), [d.name for d in cur.description])), to_examples.watermark()


@pytest.mark.parametrize("zone", ["Etc/UTC", "UTC", "Asia/Kolkata", "Europe/Amsterdam", "America/St_Johns"])
@pytest.mark.parametrize("mode", ["interactions", "messages", "interactions-real", "messages-enum"])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-stream", "server-side-cursor"])
def test_awkward_values_read_exactly_as_before(tmp_path, nasty, zone, mode, chunked, monkeypatch):
    """The Examples, rejects, snapshot bytes and watermark equal the plain psycopg read's (text
    rows), in any session zone; a session in UTC under another name gets timezone.utc (psycopg's
    fast path). Rows come in binary where every column's type loads the same (here: not with a
    real, 0.1 is not 0.10000000149 in text, or an enum, bytes in binary)."""
    from datetime import timezone

    import psycopg

    from ftctl_plugins.sources import postgres

    if not chunked:
        monkeypatch.setattr(psycopg.capabilities, "has_stream_chunked", lambda: False)
    binary, columns = [], postgres._columns
    monkeypatch.setattr(postgres, "_columns", lambda *a: (r := columns(*a), binary.append(r[1]))[0])
    dsn, schema = nasty
    dsn = f"{dsn} options='-c TimeZone={zone}'"
    cfg = {"dsn": dsn, "table": f"{schema}.t", "conversation_id": "conv", "rating": "stars",
           "reward": "reward" if mode == "interactions-real" else "reward_i",
           "feedback_type": "ft", "correction": "corr", "agent": "agent", "served_model": "served",
           "created_at": "at", "itersize": 7}
    cfg.update({"prompt": "q", "response": "a", "role": None, "content": None} if mode.startswith("interactions") else
               {"role": "role_e" if mode == "messages-enum" else "role", "content": "content"})
    examples, rejects, wm = read_all("postgres", cfg, tmp_path)
    old, old_wm = _old_path(dsn, cfg)
    old_examples = [x for x in old if not hasattr(x, "reason")]
    assert len(examples) > 10 and len(rejects) > 3  # the fixture has both
    assert examples == old_examples and rejects == [x for x in old if hasattr(x, "reason")]
    assert [e.to_json() for e in examples] == [e.to_json() for e in old_examples]
    assert [e.created_at and e.created_at.utcoffset() for e in examples] == [
        e.created_at and e.created_at.utcoffset() for e in old_examples]
    assert wm == old_wm and wm is not None
    assert binary == [mode in ("interactions", "messages")]
    assert {"tab\there", "new\nline", "back\\slash \\N \\t", "emoji😀 日本語 עברית", "\\N"} <= {
        m["content"] for e in examples for m in e.messages}
    zones = {e.created_at.tzinfo for e in examples if e.created_at}
    if zone in ("Etc/UTC", "UTC"):
        assert zones == {timezone.utc}
    else:
        assert zones == {e.created_at.tzinfo for e in old_examples if e.created_at} and timezone.utc not in zones


@pytest.mark.parametrize("cast", ["timestamptz", "timestamp", "text", "bigint"])
def test_created_at_checked_unless_a_timestamptz(tmp_path, nasty, cast):
    """Only a timestamptz created_at skips the row-by-row check (psycopg loads it aware): a naive
    timestamp, text or epoch seconds still become aware UTC datetimes, as the plain read makes them."""
    from ftctl_plugins.sources import postgres

    dsn, schema = nasty
    at = "extract(epoch from at)::bigint" if cast == "bigint" else f"at::{cast}"
    q = (f'SELECT id, conv AS conversation_id, q AS prompt, a AS response, {at} AS created_at '
         f'FROM "{schema}".t WHERE at > \'1900-01-01\'')
    cfg = {"dsn": dsn, "query": q, "prompt": "prompt", "response": "response"}
    with __import__("psycopg").connect(dsn) as conn:
        assert postgres._columns(conn, q, {})[2] == (cast == "timestamptz")
    examples, rejects, wm = read_all("postgres", cfg, tmp_path)
    old, old_wm = _old_path(dsn, cfg)
    assert len(examples) > 10 and examples == [x for x in old if not hasattr(x, "reason")]
    assert all(e.created_at.tzinfo is not None for e in examples) and wm == old_wm
