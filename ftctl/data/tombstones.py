"""Tombstones: what `ftctl forget` erased, kept as keyed hashes so no collect brings it back.

A tombstone is a conversation (its id, or the row key ``source:source_id`` when it has none) or
a value (a member number, an email, a name). Values are matched on the raw source text before
scrubbing, as a run of word tokens after folding (NFKC, lookalikes, case), so "XYZ-123-456" and
"xyz 123 456" are the same value. Only ``HMAC-SHA256(workspace secret, kind, canonical form)`` is
stored in models.lock, with the secret's fingerprint: the value itself never reaches a file, and
without the secret (``.ftctl-secret``, git-ignored: ftctl/registry/secret.py) a guess cannot be
confirmed by hashing it, however short the identifier.

Tombstones recorded before the secret existed (no ``secret`` key) were hashed with a public salt.
The hash is one-way, so they keep matching as they are (both hashes are computed while any such
entry remains): nothing already forgotten comes back. Each `ftctl forget` reads every source row
raw anyway; where a row shows what an old tombstone hashes, :class:`Rekey` replaces that
tombstone with a keyed one, so the unsalted ones dwindle to those whose rows are gone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ftctl.records import Example

LEGACY_SALT = "ftctl-forget-v1"  # the public salt of tombstones made before the workspace secret
MAX_TOKENS = 12
_TOKEN = re.compile(r"[0-9a-z]+")


def canonical_tokens(text: str) -> list[str]:
    from ftctl.lib.scrub import fold

    return _TOKEN.findall(fold(text)[0].casefold())


def legacy_digest(kind: str, canonical: str) -> str:
    return hashlib.sha256(f"{LEGACY_SALT}\0{kind}\0{canonical}".encode()).hexdigest()


def digest(secret: bytes, kind: str, canonical: str) -> str:
    from ftctl.registry.secret import keyed

    return keyed(secret, "tombstone", kind, canonical)


def conversation_entry(key: str, secret: bytes) -> dict[str, Any]:
    from ftctl.registry.secret import fingerprint

    return {"kind": "conversation", "sha256": digest(secret, "conversation", key), "secret": fingerprint(secret)}


def value_entry(value: str, secret: bytes) -> dict[str, Any]:
    from ftctl.registry.secret import fingerprint

    tokens = canonical_tokens(value)
    if not tokens:
        from ftctl.errors import UsageError

        raise UsageError("the value has no letters or digits to match", hint="pass the identifier as it appears")
    if len(tokens) > MAX_TOKENS:
        from ftctl.errors import UsageError

        raise UsageError(f"the value is longer than {MAX_TOKENS} words", hint="forget its conversation instead")
    return {"kind": "value", "sha256": digest(secret, "value", " ".join(tokens)), "tokens": len(tokens),
            "secret": fingerprint(secret)}


@dataclass
class Tombstones:
    secret: bytes | None = None  # keys the hashes of entries with a `secret` fingerprint
    conversations: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)
    lengths: set[int] = field(default_factory=set)
    legacy: bool = False  # some entries were hashed with the public salt: try both hashes

    @classmethod
    def of(cls, entries: list[dict[str, Any]], secret: bytes | None = None) -> Tombstones:
        from ftctl.registry.secret import SecretMissing, fingerprint

        t = cls(secret=secret)
        mine = fingerprint(secret) if secret else None
        for e in entries or []:
            made = e.get("secret")
            if made is None:
                t.legacy = True
            elif made != mine:
                raise SecretMissing(
                    "models.lock holds tombstones made with another workspace secret than this "
                    f"workspace's {'(none)' if secret is None else '.ftctl-secret'}",
                    hint="copy .ftctl-secret from the machine that ran `ftctl forget`; without it forgotten "
                         "rows could come back, so nothing is collected")
            if e.get("kind") == "conversation":
                t.conversations.add(e["sha256"])
            elif e.get("kind") == "value":
                t.values.add(e["sha256"])
                t.lengths.add(int(e.get("tokens") or 1))
        return t

    def __bool__(self) -> bool:
        return bool(self.conversations or self.values)

    def _digests(self, kind: str, canonical: str) -> list[str]:
        out = [digest(self.secret, kind, canonical)] if self.secret else []
        return out + [legacy_digest(kind, canonical)] if self.legacy else out

    def matches(self, ex: Example) -> bool:
        """Does ``ex`` belong to a forgotten conversation, or contain a forgotten value?"""
        keys = {ex.key, ex.conversation_id or ""} - {""}
        if any(d in self.conversations for k in keys for d in self._digests("conversation", k)):
            return True
        if not self.values:
            return False
        texts = [m.get("content") or "" for m in ex.messages] + [ex.correction or ""]
        return any(self.text_matches(t) for t in texts if t)

    def text_matches(self, text: str) -> bool:
        tokens = canonical_tokens(text)
        for n in self.lengths:
            for i in range(len(tokens) - n + 1):
                if any(d in self.values for d in self._digests("value", " ".join(tokens[i:i + n]))):
                    return True
        return False


def entries_of(lock) -> list[dict[str, Any]]:
    return (lock.model_extra or {}).get("tombstones") or []


def of_workspace(ws) -> Tombstones:
    """The workspace's tombstones, keyed with its secret (only read when there are any)."""
    entries = entries_of(ws.read_lock())
    if not entries:
        return Tombstones()
    keyed = any(e.get("secret") for e in entries)
    return Tombstones.of(entries, ws.secret() if keyed else None)


class Rekey:
    """Old unsalted tombstones, re-keyed from raw rows that show what they hash."""

    def __init__(self, entries: list[dict[str, Any]], secret: bytes):
        from ftctl.registry.secret import fingerprint

        old = [e for e in entries if not e.get("secret")]
        self.secret, self.mark = secret, fingerprint(secret)
        self.conversations = {e["sha256"] for e in old if e.get("kind") == "conversation"}
        self.values = {e["sha256"] for e in old if e.get("kind") == "value"}
        self.lengths = {int(e.get("tokens") or 1) for e in old if e.get("kind") == "value"}
        self.found: dict[str, dict[str, Any]] = {}  # old hash -> its keyed twin

    def visit(self, ex: Example) -> None:
        if len(self.found) == len(self.conversations) + len(self.values):
            return  # nothing old left (or never anything): no cost per row
        for k in {ex.key, ex.conversation_id or ""} - {""}:
            h = legacy_digest("conversation", k)
            if h in self.conversations:
                self.found[h] = {"kind": "conversation", "sha256": digest(self.secret, "conversation", k),
                                 "secret": self.mark}
        if not self.values:
            return
        for text in [m.get("content") or "" for m in ex.messages] + [ex.correction or ""]:
            tokens = canonical_tokens(text) if text else []
            for n in self.lengths:
                for i in range(len(tokens) - n + 1):
                    canonical = " ".join(tokens[i:i + n])
                    h = legacy_digest("value", canonical)
                    if h in self.values:
                        self.found[h] = {"kind": "value", "sha256": digest(self.secret, "value", canonical),
                                         "tokens": n, "secret": self.mark}

    def apply(self, entries: list[dict[str, Any]], when: str) -> list[dict[str, Any]]:
        """``entries`` with each re-keyed old tombstone replaced by its keyed twin (its date kept)."""
        out, seen = [], {e["sha256"] for e in entries}
        for e in entries:
            twin = self.found.get(e["sha256"]) if not e.get("secret") else None
            if twin is None:
                out.append(e)
            elif twin["sha256"] not in seen:
                out.append({**twin, "created": e.get("created"), "rekeyed": when})
                seen.add(twin["sha256"])
        return out

