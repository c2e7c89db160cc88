"""Which training rows each version saw first: the snapshot's first-seen ledger.

``seen.jsonl`` in a snapshot holds, for every row of its train split, the moment that row
first entered a snapshot of the model (``{"id", "first"}``; ``id`` hashes the row's messages,
what training sees). Collect carries the previous ledger forward, so a row keeps its first
moment across collects, rebuilds (``--since all``) and re-curation.

That one time per row answers both questions the loop asks:

- which version saw a row first: the earliest version whose training snapshot was created at or
  after the row's moment (every version trains on all its snapshot's rows its lineage has not
  seen, so the lineage of a version has seen exactly the rows collected up to its snapshot);
- which rows a version continued from ``parent`` must still learn: those first collected after
  the parent's snapshot (``train --from P --new-only``; ``cycle.train_from: stable|latest``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ftctl.lib.times import parse_time

_string = json.encoder.encode_basestring  # json.dumps' own string encoder (ensure_ascii=False)
_ROLES = {r: _string(r) for r in ("system", "user", "assistant", "tool")}

NOT_YET = "not yet trained"


def row_id(row: dict[str, Any]) -> str:
    """A row's identity: its messages (with a correction, the target training actually sees)."""
    return hashlib.sha256(_text(row.get("messages"), row.get("correction")).encode("utf-8")).hexdigest()[:24]


def line_digest(messages: Any, correction: Any, line: bytes) -> bytes:
    """The 12 bytes whose hex is :func:`row_id` of ``line`` (a row's snapshot line), from the row
    still in memory when it is plain (its strings read back unchanged), else from the line: collect
    takes the ledger's ids as it spills, with no second read and parse of the train file."""
    text = _plain_dumps(messages, correction)
    if text is None:
        row = _line(line)
        text = _text(row.get("messages"), row.get("correction"))
    return hashlib.sha256(text.encode("utf-8")).digest()[:12]


def _text(messages: Any, correction: Any) -> str:
    """What :func:`row_id` hashes."""
    text = _plain_dumps(messages, correction)
    if text is None:
        text = json.dumps([messages, correction], sort_keys=True, ensure_ascii=False)
    return text


def _plain_dumps(messages: Any, correction: Any) -> str | None:
    """``json.dumps([messages, correction], sort_keys=True, ensure_ascii=False)``, the same text,
    written directly when every message is just ``{role, content}`` strings (a snapshot's common
    row; a fifth of the encoder's cost); None for anything else."""
    if not isinstance(messages, list) or not (correction is None or isinstance(correction, str)):
        return None
    parts = []
    for m in messages:
        if m.__class__ is not dict or len(m) != 2:
            return None
        content, role = m.get("content"), m.get("role")
        if content.__class__ is not str or role.__class__ is not str:
            return None
        parts.append(f'{{"content": {_string(content)}, "role": {_ROLES.get(role) or _string(role)}}}')
    return f'[[{", ".join(parts)}], {"null" if correction is None else _string(correction)}]'


def _line(raw: str | bytes) -> Any:
    """A JSON line as json.loads reads it (orjson's reading, where it can: the same values)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # what orjson refuses and json takes (a lone surrogate, NaN)
        return json.loads(raw)


def read(path: Path) -> dict[str, str]:
    """id -> first moment (ISO); empty when the snapshot has no ledger (made before it existed)."""
    out: dict[str, str] = {}
    if path.is_file():
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    e = _line(line)
                    out[e["id"]] = e["first"]
    return out


def ids(train: Path) -> Iterator[str]:
    """:func:`row_id` of every row of ``train`` (a split file), in order."""
    with open(train, "rb") as f:
        for line in f:
            if line.strip():
                yield row_id(_line(line))


def write(row_ids: Iterable[str], ledger: Path, previous: dict[str, str], created: str) -> dict[str, str]:
    """The ledger of a train split (``row_ids``: its rows' :func:`row_id`, in order; collect takes
    them as it spills): known rows keep their moment, new ones get ``created``."""
    get = previous.get
    out = {i: get(i, created) for i in row_ids}
    firsts = {first: json.dumps(first) for first in set(out.values())}  # the moments are few
    with open(ledger, "w", encoding="utf-8") as f:  # json.dumps({"id": i, "first": first}); the ids are hex
        f.writelines(f'{{"id": "{i}", "first": {firsts[first]}}}\n' for i, first in out.items())
    return out


def first_seen(ledger: dict[str, str], versions: dict[str, Any]) -> dict[str, int]:
    """Rows per version that saw them first (``versions``: models.lock entries), plus NOT_YET."""
    order = sorted((parse_time(snapshot_time(e)), v) for v, e in versions.items() if snapshot_time(e))
    counts: dict[str, int] = {}
    for first, n in Counter(ledger.values()).items():  # the moments are few: each looked up once
        t = parse_time(first)
        v = next((v for at, v in order if at >= t), NOT_YET)
        counts[v] = counts.get(v, 0) + n
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == NOT_YET, kv[0])))


def new_rows(train: Path, ledger: dict[str, str], since: str) -> Iterator[str]:
    """The lines of ``train`` first collected after ``since`` (a parent's snapshot time). A row
    the ledger does not know (a snapshot from before ledgers) counts as new: better trained twice
    than never."""
    cut = parse_time(since)
    with open(train, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                first = ledger.get(row_id(json.loads(line)))
                if first is None or parse_time(first) > cut:
                    yield line


def snapshot_time(entry: Any) -> str | None:
    """When the training snapshot of a version (a models.lock entry) was collected."""
    dataset = getattr(entry, "dataset", None) or {}
    return dataset.get("created") or getattr(entry, "created", None)
