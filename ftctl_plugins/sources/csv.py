"""CSV exports (historical claims with expert decisions, ...): columns mapped into an Example.

``prompt`` and ``response`` are templates over the columns (``"Claim {claim_id}: {notes}"``);
the other keys name a column each. Templates naming a column the file lacks are a config
error before any row is read; ragged rows are rejected with their line.
"""

from __future__ import annotations

import csv
import string
from collections.abc import Iterator

from pydantic import Field

from ftctl.api import ConfigError, Example, PluginConfig, Reject, Source
from ftctl_plugins.sources.common import RowError, example_from
from ftctl_plugins.sources.files import Watermarked, display, expand

_FIELDS = ("rating", "reward", "feedback_type", "correction", "agent", "created_at", "conversation_id",
           "served_model")


class CsvSource(Watermarked, Source):
    name = "csv"

    class Config(PluginConfig):
        path: str = Field(description="a file, directory or glob (relative to the workspace)")
        prompt: str = Field(description="template over columns, e.g. 'Claim {id}: {description}'")
        response: str = Field(description="template over columns, e.g. '{decision}'")
        system: str | None = Field(None, description="template of a system message over columns (none when unset)")
        id: str | None = Field(None, description="column with the row's primary key")
        rating: str | None = Field(None, description="column with a 1..5 rating")
        reward: str | None = Field(None, description="column with a -1..+1 reward")
        feedback_type: str | None = Field(None, description="column with the feedback type (thumbs_up, correction, ...)")
        correction: str | None = Field(None, description="column with a user's corrected answer (becomes the training target)")
        agent: str | None = Field(None, description="column with the agent type")
        created_at: str | None = Field(None, description="column with the event time (the watermark)")
        conversation_id: str | None = Field(None, description="column with the conversation id (keeps a conversation in one split)")
        served_model: str | None = Field(None, description="column with the model id that answered (deploy serves `model@vX.Y`)")
        delimiter: str = Field(",", min_length=1, max_length=1, description="the field separator")
        encoding: str = Field("utf-8-sig", description="the file encoding (the default tolerates a BOM)")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        c = self.config
        for path in expand(self.ctx.root, c.path, (".csv", ".tsv")):
            where = display(self.ctx.root, path)
            with open(path, newline="", encoding=c.encoding, errors="strict") as f:
                reader = csv.DictReader(f, delimiter=c.delimiter)
                header = reader.fieldnames or []
                self._check_columns(header, where)
                try:
                    for row in reader:
                        loc = f"{where}:{reader.line_num}"
                        key = f"{where}:{row.get(c.id)}" if c.id and row.get(c.id) else loc
                        if None in row or any(row.get(h) is None for h in header):
                            yield Reject(self.source, key, "ragged_row",
                                         f"{len(header)} columns expected")
                            continue
                        try:
                            yield self.seen(example_from(self._map(row), source=self.source, source_id=key))
                        except RowError as e:
                            yield Reject(self.source, key, e.reason, e.detail)
                except UnicodeDecodeError as e:
                    yield Reject(self.source, f"{where}:{reader.line_num + 1}", "invalid_utf8",
                                 f"{e}; the rest of the file was not read")
                except csv.Error as e:
                    yield Reject(self.source, f"{where}:{reader.line_num}", "invalid_csv",
                                 f"{e}; the rest of the file was not read")

    def _check_columns(self, header: list[str], where: str) -> None:
        c = self.config
        wanted = {f for t in (c.prompt, c.response, c.system or "") for _, f, _, _ in
                  string.Formatter().parse(t) if f}
        wanted |= {getattr(c, k) for k in ("id", *_FIELDS) if getattr(c, k)}
        missing = sorted(wanted - set(header))
        if missing:
            raise ConfigError(f"{where}: no column(s) {', '.join(missing)}",
                              hint=f"the header has: {', '.join(header)[:300]}")

    def _map(self, row: dict[str, str]) -> dict:
        c = self.config
        out = {"prompt": c.prompt.format_map(row), "response": c.response.format_map(row)}
        if c.system:
            out["system"] = c.system.format_map(row)
        for k in _FIELDS:
            if getattr(c, k):
                out[k] = row[getattr(c, k)]
        return out
