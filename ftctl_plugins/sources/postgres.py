"""PostgreSQL chat history: streamed through a server-side cursor in a read-only transaction.

Memory stays constant whatever the table size (``itersize`` rows at a time). The DSN may use
``${ENV}``; connection errors are redacted so the password never reaches a log or models.lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from ftctl.api import Example, ExternalToolError, Reject, redact
from ftctl_plugins.sources.sql import RowsToExamples, SqlConfig, SqlSource, build_query


class PostgresSource(SqlSource):
    name = "postgres"

    class Config(SqlConfig):
        dsn: str = Field(description="libpq DSN or URL; use ${ENV} for the password")
        itersize: int = Field(5000, ge=1, description="rows fetched per round trip")
        connect_timeout: int = Field(10, ge=1, description="seconds to wait for the database")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row

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
            query, params = build_query(c, lambda n: sql.Identifier(n).as_string(conn),
                                        lambda n: f"%({n})s", since)
            self._rows = RowsToExamples(c, source, c.table or "query")
            try:
                with conn.cursor(name="ftctl_collect", row_factory=dict_row) as cur:
                    cur.itersize = c.itersize
                    cur.execute(query, params)
                    yield from self._rows(_batched(cur, c.itersize))
            except psycopg.Error as e:
                raise ExternalToolError(f"PostgreSQL source {source!r}: {redact(str(e).strip().splitlines()[0])}",
                                        hint="check the table/column mapping or the query") from None
            finally:
                conn.rollback()


def _batched(cur, size: int):
    """Rows of a server-side cursor, ``size`` per round trip (fetchmany beats per-row next)."""
    while batch := cur.fetchmany(size):
        yield from batch
