"""SQLite: the embedded default (the demo's samples/feedback.sqlite), opened read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from pydantic import Field

from ftctl.api import ConfigError, Example, ExternalToolError, Reject
from ftctl_plugins.sources.sql import RowsToExamples, SqlConfig, SqlSource, build_query


def quote(name: str) -> str:
    # sqlite3 has no identifier-quoting helper; SQL's rule is: wrap in "..." and double any ".
    return '"' + name.replace('"', '""') + '"'


class SqliteSource(SqlSource):
    name = "sqlite"

    class Config(SqlConfig):
        path: str = Field(description="the database file (relative to the workspace)")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        c = self.config
        source = self.source_name
        path = self.ctx.root / c.path
        if not path.is_file():
            raise ConfigError(f"source {source!r}: no SQLite database at {c.path}",
                              hint="paths are relative to the workspace")
        query, params = build_query(c, quote, lambda n: f":{n}", since)
        params = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in params.items()}
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        self._rows = RowsToExamples(c, source, c.table or "query")
        try:
            cur = conn.execute(query, params)
            yield from self._rows(cur, [d[0] for d in cur.description])
        except sqlite3.Error as e:
            raise ExternalToolError(f"SQLite source {source!r}: {e}",
                                    hint="check the table/column mapping or the query") from None
        finally:
            conn.close()
