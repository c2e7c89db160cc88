"""Feedback event logs as JSONL: one event per line.

Each line is a feedback event (``prompt``/``response`` or chat ``messages``, plus ``rating``,
``reward``, ``feedback_type``, ``correction``...); OpenAI chat-format and prompt/completion
files import as they are. Lines stream one at a time; a line longer than ``max_line_bytes`` is
rejected without being held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import Field

from ftctl.api import Example, PluginConfig, Reject, Source
from ftctl_plugins.sources.common import RowError, example_from
from ftctl_plugins.sources.files import Watermarked, display, expand

_SKIP_CHUNK = 1 << 20


class JsonlSource(Watermarked, Source):
    name = "jsonl"

    class Config(PluginConfig):
        path: str = Field(description="a file, directory or glob (relative to the workspace)")
        max_line_bytes: int = Field(10 << 20, ge=1024, description="longer lines are rejected")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        for path in expand(self.ctx.root, self.config.path, (".jsonl", ".json", ".ndjson")):
            where = display(self.ctx.root, path)
            with open(path, "rb") as f:
                lineno = 0
                while True:
                    raw = f.readline(self.config.max_line_bytes + 1)
                    if not raw:
                        break
                    lineno += 1
                    loc = f"{where}:{lineno}"
                    if len(raw) > self.config.max_line_bytes and not raw.endswith(b"\n"):
                        size = len(raw) + _skip_rest_of_line(f)
                        yield Reject(self.source, loc, "line_too_long", f"{size} bytes")
                        continue
                    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]  # a UTF-8 BOM from a Windows export
                    if not raw.strip():
                        continue  # blank lines are not rows
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield Reject(self.source, loc, "invalid_utf8", str(e)[:120])
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        reason = "truncated_json" if e.pos >= len(line.rstrip()) else "invalid_json"
                        yield Reject(self.source, loc, reason, e.msg)
                        continue
                    try:
                        yield self.seen(example_from(row, source=self.source, source_id=loc))
                    except RowError as e:
                        yield Reject(self.source, loc, e.reason, e.detail)


def _skip_rest_of_line(f) -> int:
    skipped = 0
    while True:
        chunk = f.readline(_SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped
