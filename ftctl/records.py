"""The one in-memory shape of training data.

Every source yields ``Example`` (or ``Reject`` for an input row it cannot use); curation,
training and evaluation all consume ``Example``. Snapshots store one ``Example.to_dict()`` per
JSONL line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

# orjson writes a dataclass in C, ten times faster than json.dumps of a dict; datetimes pass
# through to isoformat (orjson's own format rounds an offset with seconds, e.g. LMT +00:19:32)
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")

_UTC = frozenset(("UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "Universal", "Zulu", "UCT", "GMT",
                  "Etc/GMT", "Etc/Greenwich", "Greenwich"))  # IANA's names of UTC: no offset, ever

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    messages: list[dict[str, Any]]  # [{"role": ..., "content": ...}], chat format
    source: str = ""  # source name from ftctl.yaml
    source_id: str = ""  # where it came from: primary key, or file:line
    conversation_id: str | None = None  # stable id used for the train/val/test split
    rating: float | None = None  # 1..5
    reward: float | None = None  # -1..+1
    feedback_type: str | None = None  # thumbs_up, thumbs_down, correction, validation, ...
    correction: str | None = None  # a user's edited answer: becomes the training target
    agent: str | None = None
    created_at: datetime | None = None
    served_model: str | None = None  # the model id the server answered with (deploy sets `model@vX.Y`)
    meta: dict[str, Any] = field(default_factory=dict)
    # function schemas the conversation's tool calls were made against (OpenAI's ``tools``); a
    # message may then carry ``tool_calls`` (assistant) or ``tool_call_id`` (tool)
    tools: list[dict[str, Any]] | None = None

    @property
    def prompt(self) -> str:
        """The last user turn (what a reference answer answers)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def response(self) -> str:
        """The last assistant turn."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    @property
    def key(self) -> str:
        """The id the split hashes: the conversation, or the row when there is none."""
        return self.conversation_id or f"{self.source}:{self.source_id}"

    def to_dict(self) -> dict[str, Any]:
        # a shallow dict, not dataclasses.asdict: its deep copy dominated writing a snapshot
        # (about 1 ms per example); callers serialise it and must not mutate it
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d

    def to_json(self) -> bytes:
        """One JSONL line's worth (no newline): ``to_dict`` as compact UTF-8 JSON."""
        try:
            if self._plain():
                return orjson.dumps(self)  # orjson's own datetime: a third of the callback's cost
            return orjson.dumps(self, default=_isoformat, option=_ORJSON)
        except TypeError:  # what orjson refuses (an int beyond 64 bits in meta): the standard library's way
            return json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")

    def _plain(self) -> bool:
        """Nothing nested that could hold a datetime (meta, tools, tool calls), and ``created_at``
        one that orjson writes as isoformat does: a datetime (not a subclass) whose UTC offset
        has no seconds (orjson drops them: LMT +00:19:32)."""
        if self.meta or self.tools is not None:
            return False
        for m in self.messages:
            if "tool_calls" in m:
                return False
        t = self.created_at
        if t is None:
            return True
        if t.__class__ is not datetime:
            return False
        tz = t.tzinfo
        if tz is None or tz is timezone.utc or tz.__class__ is ZoneInfo and tz.key in _UTC:
            return True  # psycopg's timestamptz: the session's zone, most often UTC
        off = t.utcoffset()
        return off is None or not (off.seconds % 60 or off.microseconds)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        try:
            ex = cls(**d)  # a line this class wrote: every key known
        except TypeError:  # keys from elsewhere (or a newer version): the known ones
            known = cls.__dataclass_fields__
            ex = cls(**{k: v for k, v in d.items() if k in known})
        ex.created_at = datetime.fromisoformat(ex.created_at) if ex.created_at else None
        if ex.meta is None:
            ex.meta = {}
        return ex

    @classmethod
    def from_json(cls, line: bytes | str) -> Example:
        return cls.from_dict(orjson.loads(line))


@dataclass
class Reject:
    """An input row a source could not turn into an Example: nothing is dropped silently."""

    source: str
    where: str  # file:line, or table primary key
    reason: str  # short, countable: "invalid_json", "missing_field:content", ...
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RowError(ValueError):
    """A row that cannot become an Example: ``reason`` is the countable part (a Reject's reason)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def write_jsonl(path: Path, examples: Iterable[Example]) -> int:
    """Write examples one per line; returns the count. Callers write to a temp path + rename."""
    n = 0
    with open(path, "wb") as f:
        for ex in examples:
            f.write(ex.to_json() + b"\n")
            n += 1
    return n


def read_jsonl(path: Path) -> Iterator[Example]:
    """Stream examples from a snapshot file (one Example dict per line)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield Example.from_json(line)
