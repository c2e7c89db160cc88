"""Tombstones: what `ftctl forget` erased, kept as salted hashes so no collect brings it back.

A tombstone is a conversation (its id, or the row key ``source:source_id`` when it has none) or
a value (a member number, an email, a name). Values are matched on the raw source text before
scrubbing, as a run of word tokens after folding (NFKC, lookalikes, case), so "XYZ-123-456" and
"xyz 123 456" are the same value. Only ``sha256(salt, kind, canonical form)`` is stored in
models.lock: the value itself never reaches a file. A short numeric identifier can still be
found again by hashing every candidate; the hashes keep values out of the repository's text,
they do not make them secret from someone with the repository and time to guess.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ftctl.records import Example

SALT = "ftctl-forget-v1"
MAX_TOKENS = 12
_TOKEN = re.compile(r"[0-9a-z]+")


def canonical_tokens(text: str) -> list[str]:
    from ftctl.lib.scrub import fold

    return _TOKEN.findall(fold(text)[0].casefold())


def digest(kind: str, canonical: str) -> str:
    return hashlib.sha256(f"{SALT}\0{kind}\0{canonical}".encode()).hexdigest()


def conversation_entry(key: str) -> dict[str, Any]:
    return {"kind": "conversation", "sha256": digest("conversation", key)}


def value_entry(value: str) -> dict[str, Any]:
    tokens = canonical_tokens(value)
    if not tokens:
        from ftctl.errors import UsageError

        raise UsageError("the value has no letters or digits to match", hint="pass the identifier as it appears")
    if len(tokens) > MAX_TOKENS:
        from ftctl.errors import UsageError

        raise UsageError(f"the value is longer than {MAX_TOKENS} words", hint="forget its conversation instead")
    return {"kind": "value", "sha256": digest("value", " ".join(tokens)), "tokens": len(tokens)}


@dataclass
class Tombstones:
    conversations: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)
    lengths: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, entries: list[dict[str, Any]]) -> Tombstones:
        t = cls()
        for e in entries or []:
            if e.get("kind") == "conversation":
                t.conversations.add(e["sha256"])
            elif e.get("kind") == "value":
                t.values.add(e["sha256"])
                t.lengths.add(int(e.get("tokens") or 1))
        return t

    def __bool__(self) -> bool:
        return bool(self.conversations or self.values)

    def matches(self, ex: Example) -> bool:
        """Does ``ex`` belong to a forgotten conversation, or contain a forgotten value?"""
        keys = {ex.key, ex.conversation_id or ""} - {""}
        if any(digest("conversation", k) in self.conversations for k in keys):
            return True
        if not self.values:
            return False
        texts = [m.get("content") or "" for m in ex.messages] + [ex.correction or ""]
        return any(self.text_matches(t) for t in texts if t)

    def text_matches(self, text: str) -> bool:
        tokens = canonical_tokens(text)
        for n in self.lengths:
            for i in range(len(tokens) - n + 1):
                if digest("value", " ".join(tokens[i:i + n])) in self.values:
                    return True
        return False


def of_lock(lock) -> Tombstones:
    return Tombstones.of((lock.model_extra or {}).get("tombstones") or [])
