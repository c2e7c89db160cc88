"""Scrub placeholders (``<PERSON>``, ``<DATE>`` ...) in text: which, how many, and whether a text is
nothing but them. Shared by collect's scrub check and `train --preview` (stages do not import
each other)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")
_ALNUM = re.compile(r"[^\W_]")


def types_in(text: str, known: Iterable[str] | None = None) -> Counter:
    """Placeholder types in ``text`` with their counts (only ``known`` ones when given: ``List<T>``
    in a code answer is not a placeholder)."""
    wanted = set(known) if known is not None else None
    return Counter(t for t in PLACEHOLDER.findall(text) if wanted is None or t in wanted)


def only_placeholders(text: str, known: Iterable[str] | None = None) -> bool:
    """True when ``text`` holds a placeholder and no letter or digit outside placeholders."""
    if not types_in(text, known):
        return False
    wanted = set(known) if known is not None else None
    rest = PLACEHOLDER.sub(lambda m: "" if wanted is None or m.group(1) in wanted else m.group(), text)
    return not _ALNUM.search(rest)


def shape(text: str) -> str:
    """The form of ``text`` without its content: letters become A/a, digits 0 ("I70.302" ->
    "A00.000", "Jane Roe" -> "Aaaa Aaa"): shows what a placeholder replaced without quoting it."""
    return re.sub(r"[^\W\d_]", lambda m: "A" if m.group().isupper() else "a", re.sub(r"\d", "0", text))


def answers_with_placeholders(split_file: Path, known: Iterable[str] | None = None) -> dict:
    """Of the assistant answers in a snapshot split (JSONL of examples): how many, how many hold a
    placeholder, how many are nothing but placeholders, and the count per type."""
    known = list(known) if known is not None else None
    answers = with_ph = only = 0
    by_type: Counter = Counter()
    with open(split_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            for m in json.loads(line).get("messages") or ():
                if m.get("role") != "assistant":
                    continue
                answers += 1
                found = types_in(m.get("content") or "", known)
                if found:
                    with_ph += 1
                    by_type.update(set(found))
                    only += only_placeholders(m.get("content") or "", known)
    return {"answers": answers, "with_placeholder": with_ph, "only_placeholders": only,
            "share": round(with_ph / answers, 4) if answers else 0.0, "by_type": dict(by_type.most_common())}
