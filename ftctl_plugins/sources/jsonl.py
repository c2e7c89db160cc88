"""Feedback event logs and datasets as JSONL (or a JSON array): one event per line.

Each line is a feedback event (``prompt``/``response`` or chat ``messages``, plus ``rating``,
``reward``, ``feedback_type``, ``correction``...); OpenAI chat-format and prompt/completion
files import as they are, ShareGPT and Alpaca rows too (``format``, see
ftctl_plugins.sources.formats). Lines stream one at a time; a line longer than
``max_line_bytes`` is rejected without being held in memory. A ``.json`` file holding one JSON
array (how Alpaca and ShareGPT datasets are often published) is read whole, up to
``max_array_bytes``, and its rows named by the line each starts on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from ftctl.api import ConfigError, Example, PluginConfig, Reject, Source
from ftctl_plugins.sources.common import RowError, example_from
from ftctl_plugins.sources.formats import Format, to_event
from ftctl_plugins.sources.files import Watermarked, display, expand

_SKIP_CHUNK = 1 << 20


class JsonlSource(Watermarked, Source):
    name = "jsonl"

    class Config(PluginConfig):
        path: str = Field(description="a file, directory or glob (relative to the workspace)")
        max_line_bytes: int = Field(10 << 20, ge=1024, description="longer lines are rejected")
        format: Format = Field("auto", description="openai (messages), sharegpt (conversations), alpaca "
                               "(instruction/input/output), feedback (ftctl's events), or auto: each row by its keys")
        max_array_bytes: int = Field(1 << 30, ge=1024, description="a .json file holding one array is read whole "
                                     "up to this size")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        for path in expand(self.ctx.root, self.config.path, (".jsonl", ".json", ".ndjson")):
            where = display(self.ctx.root, path)
            if _is_array(path):
                yield from self._array(path, where)
                continue
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
                    yield self._row(row, loc)

    def _row(self, row, loc: str) -> Example | Reject:
        try:
            return self.seen(example_from(to_event(row, self.config.format), source=self.source, source_id=loc))
        except RowError as e:
            return Reject(self.source, loc, e.reason, e.detail)

    def _array(self, path: Path, where: str) -> Iterator[Example | Reject]:
        size = path.stat().st_size
        if size > self.config.max_array_bytes:
            raise ConfigError(f"{where}: a JSON array of {size} bytes is over max_array_bytes",
                              hint="convert it to JSONL (one row per line: read as a stream), or raise "
                                   "max_array_bytes in the source's config")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            yield Reject(self.source, f"{where}:1", "invalid_utf8", str(e)[:120])
            return
        # element by element with raw_decode, so a bad element is one reject naming its line
        decoder, pos, lineno, line_at = json.JSONDecoder(), text.index("[") + 1, 1, 0
        while True:
            pos = _skip(text, pos)
            if pos >= len(text) or text[pos] == "]":
                break
            lineno += text.count("\n", line_at, pos)
            line_at = pos
            loc = f"{where}:{lineno}"
            try:
                row, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                yield Reject(self.source, loc, "invalid_json", e.msg)
                return  # the rest of the array cannot be told apart: one reject, and it says where
            yield self._row(row, loc)
            pos = _skip(text, end)
            if pos < len(text) and text[pos] == ",":
                pos += 1


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _is_array(path: Path) -> bool:
    """A .json file whose first character (after a BOM and whitespace) opens an array."""
    if path.suffix.lower() != ".json":
        return False
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _skip_rest_of_line(f) -> int:
    skipped = 0
    while True:
        chunk = f.readline(_SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped
