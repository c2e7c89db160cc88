"""PostgreSQL chat history: streamed in a read-only transaction, ``itersize`` rows at a time.

The rows stream in chunks (libpq's chunked rows mode, psycopg's ``stream(size=...)``): the server
sends without waiting for the client to ask again, so it produces rows while Python builds
Examples, and memory stays constant whatever the table size. Where libpq is older than 17, a
server-side cursor fetches ``itersize`` rows per round trip instead. The DSN may use ``${ENV}``;
connection errors are redacted so the password never reaches a log or models.lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import Field

from ftctl.api import Example, ExternalToolError, Reject, redact
from ftctl_plugins.sources.sql import RowsToExamples, SqlConfig, SqlSource, build_query


class PostgresSource(SqlSource):
    name = "postgres"

    class Config(SqlConfig):
        dsn: str = Field(description="libpq DSN or URL; use ${ENV} for the password")
        itersize: int = Field(2000, ge=1, description="rows per streamed chunk (per round trip where libpq < 17)")
        connect_timeout: int = Field(10, ge=1, description="seconds to wait for the database")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        import psycopg
        from psycopg import sql

        c = self.config
        source = self.source_name
        try:
            conn = psycopg.connect(c.dsn, connect_timeout=c.connect_timeout, autocommit=False)
        except psycopg.Error as e:
            raise ExternalToolError(f"cannot connect to PostgreSQL for source {source!r}: "
                                    f"{redact(str(e).strip().splitlines()[0])}",
                                    hint="check the source's dsn (and that the server is up)") from None
        with conn:
            conn.read_only = True  # we never write to a team's database
            _utc_by_name(conn)
            query, params = build_query(c, lambda n: sql.Identifier(n).as_string(conn),
                                        lambda n: f"%({n})s", since)
            self._rows = RowsToExamples(c, source, c.table or "query")
            try:
                names, binary, aware = _columns(conn, query, params)
                with _streamed(conn, query, params, c.itersize, binary) as rows:
                    yield from self._rows(rows, names, aware)
            except psycopg.Error as e:
                raise ExternalToolError(f"PostgreSQL source {source!r}: {redact(str(e).strip().splitlines()[0])}",
                                        hint="check the table/column mapping or the query") from None
            finally:
                conn.rollback()


# the zone names PostgreSQL also calls "UTC" (a zone's abbreviation is what to_char's TZ prints)
_UTC_ALIASES = frozenset((b"Etc/UTC", b"Etc/Universal", b"Universal", b"Etc/Zulu", b"Zulu"))


def _utc_by_name(conn) -> None:
    """A session in UTC under another name (Debian's and Docker's default is Etc/UTC) calls it
    UTC for this transaction: psycopg then returns timestamptz values in ``timezone.utc``
    instead of converting each one into ``ZoneInfo("Etc/UTC")`` (0.24 µs a row, an eighth of
    the read path). The same zone, so the same values, offsets and text."""
    if conn.pgconn.parameter_status(b"TimeZone") in _UTC_ALIASES:
        conn.execute("SET LOCAL TimeZone = 'UTC'")


# types psycopg loads into the same value from binary as from text; not floats (text follows
# extra_float_digits), numeric, nor any type psycopg does not know (an enum comes as bytes)
_SAME_IN_BINARY = ("bool", "int2", "int4", "int8", "text", "varchar", "bpchar", "name", "timestamptz", "timestamp",
                   "date", "uuid")


def _columns(conn, query: str, params: dict) -> tuple[list[str], bool, bool]:
    """The names of ``query``'s columns (asked with LIMIT 0, which reads no row); whether every
    one has a type of _SAME_IN_BINARY: then rows come in binary, 6% cheaper to load (integers
    and times are not parsed from text); and whether created_at is a timestamptz, which psycopg
    loads as an aware datetime (or raises), so its rows need no check."""
    from psycopg.postgres import types

    same = {types[name].oid for name in _SAME_IN_BINARY}
    columns = conn.execute(f"SELECT * FROM ({query}) AS ftctl_d LIMIT 0", params).description or ()
    aware = any(d.name == "created_at" and d.type_code == types["timestamptz"].oid for d in columns)
    return [d.name for d in columns], all(d.type_code in same for d in columns), aware


@contextmanager
def _streamed(conn, query: str, params: dict, size: int, binary: bool) -> Iterator[Iterator[tuple]]:
    """The rows of ``query`` as tuples, ``size`` at a time; a stream left early is closed
    (psycopg cancels the query), so the transaction can end."""
    import psycopg

    if not psycopg.capabilities.has_stream_chunked():  # libpq < 17: a round trip per batch
        with conn.cursor(name="ftctl_collect") as cur:
            cur.itersize = size
            cur.execute(query, params, binary=binary)
            yield _batched(cur, size)
        return
    rows = conn.cursor().stream(query, params, size=size, binary=binary)
    try:
        yield rows
    finally:
        rows.close()


def _batched(cur, size: int) -> Iterator[tuple]:
    """Rows of a server-side cursor, ``size`` per round trip (fetchmany beats per-row next)."""
    while batch := cur.fetchmany(size):
        yield from batch
