"""The scrub check: does scrubbing eat the data ftctl exists to learn from? (issue 20, house rule 9)

Collect feeds every scrubbed row through :class:`ScrubCheck`. Per placeholder type it counts the
assistant answers that type changed and the answers it left as nothing but placeholders. A type
that changes more than ``curate.scrub.heavy_share`` of the answers (default 5%), or empties more
than ``max_emptied`` of them (1%), is a finding: collect shows it with three examples and stops
with exit 2, unless ``curate.scrub.accept_heavy`` names the type. Examples never quote what was
scrubbed: the replaced text is shown as its shape ("I70.302" -> "A00.000"), the rest as scrubbed.

A row whose every assistant answer came out as placeholders only is rejected
(``scrubbed_to_placeholders``): a model trained on it learns to answer "<PERSON>".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ftctl.errors import USAGE, FtctlError
from ftctl.lib import placeholders

REJECT = "scrubbed_to_placeholders"
EXAMPLES = 3
_EXAMPLE_CHARS = 160


class ScrubTooHeavy(FtctlError):
    """Scrubbing changed or emptied too many assistant answers (exit 2, like a config problem:
    the team decides, by keep patterns or accept_heavy)."""

    exit_code = USAGE


@dataclass
class ScrubCheck:
    heavy_share: float = 0.05
    max_emptied: float = 0.01
    accept: frozenset[str] = frozenset()
    answers: int = 0
    changed: Counter = field(default_factory=Counter)
    emptied: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    rows_emptied: int = 0

    @classmethod
    def of(cls, sc) -> "ScrubCheck":
        return cls(sc.heavy_share, sc.max_emptied, frozenset(sc.accept_heavy))

    def add(self, before: list[dict], after: list[dict]) -> bool:
        """Count one row's assistant answers (its messages before and after scrubbing). True when
        every assistant answer came out as placeholders only: the caller rejects the row."""
        answers = emptied = 0
        for b, a in zip(before, after):
            if b.get("role") != "assistant":
                continue
            old, new = b.get("content") or "", a.get("content") or ""
            if not old.strip():
                continue
            answers += 1
            self.answers += 1
            if old == new:
                continue
            added = placeholders.types_in(new) - placeholders.types_in(old)  # a literal "<X>" is not ours
            is_empty = placeholders.only_placeholders(new) and not placeholders.only_placeholders(old)
            emptied += is_empty
            for t in added:
                self.changed[t] += 1
                if is_empty:
                    self.emptied[t] += 1
                ex = self.examples.setdefault(t, [])
                if len(ex) < EXAMPLES:
                    ex.append({"before": _shown(old, new), "after": _clip(new)})
        if answers and emptied == answers:
            self.rows_emptied += 1
            return True
        return False

    def findings(self) -> list[dict]:
        out = []
        for t in sorted(self.changed, key=lambda t: -self.changed[t]):
            share = self.changed[t] / self.answers if self.answers else 0.0
            empty = self.emptied[t] / self.answers if self.answers else 0.0
            why = []
            if share > self.heavy_share:
                why.append(f"changed {self.changed[t]} of {self.answers} assistant answers ({share:.1%}, "
                           f"limit {self.heavy_share:.0%})")
            if empty > self.max_emptied:
                why.append(f"left {self.emptied[t]} answers as nothing but placeholders ({empty:.1%}, "
                           f"limit {self.max_emptied:.0%})")
            if why:
                out.append({"type": t, "why": "; ".join(why), "accepted": t in self.accept,
                            "changed": self.changed[t], "emptied": self.emptied[t], "share": round(share, 4),
                            "examples": self.examples.get(t, [])})
        return out

    def to_card(self) -> dict:
        return {"answers": self.answers, "heavy_share": self.heavy_share, "max_emptied": self.max_emptied,
                "accept_heavy": sorted(self.accept), "rows_rejected": self.rows_emptied,
                "by_type": {t: {"changed": self.changed[t], "emptied": self.emptied[t],
                                "share": round(self.changed[t] / self.answers, 4) if self.answers else 0.0}
                            for t in sorted(self.changed)},
                "findings": self.findings()}


def report(card: dict, log) -> None:
    """Say what the check found (the collect summary), then stop unless every finding is accepted."""
    check = card.get("scrub_check") or {}
    findings = check.get("findings") or []
    for f in findings:
        tag = "[yellow]accepted:[/] " if f["accepted"] else "[red]scrubbing eats the data:[/] "
        log(f"{tag}<{f['type']}> {f['why']}")
        for e in f["examples"]:
            log(f"    before (replaced text as its shape): {_escape(e['before'])}")
            log(f"    after:  {_escape(e['after'])}")
    refused = [f["type"] for f in findings if not f["accepted"]]
    if refused:
        err = ScrubTooHeavy(
            f"scrubbing changed too many assistant answers: {', '.join('<' + t + '>' for t in refused)} "
            f"(nothing was recorded)",
            hint="keep the domain's own codes with curate.scrub.keep: [regex], or, when the team expects "
                 f"it, curate.scrub.accept_heavy: [{', '.join(refused)}]")
        raise err


def _shown(before: str, after: str) -> str:
    """``before`` with each replaced stretch shown as its shape in [ ], the rest as ``after`` has it."""
    import regex

    parts = placeholders.PLACEHOLDER.split(after)  # literal, type, literal, type, ..., literal
    pattern = "".join(regex.escape(p) if i % 2 == 0 else "(.+?)" for i, p in enumerate(parts))
    try:
        m = regex.fullmatch(pattern, before, flags=regex.DOTALL, timeout=1)
    except TimeoutError:
        m = None
    if m is None:
        return _clip(placeholders.PLACEHOLDER.sub("[…]", after))
    out = []
    for i, p in enumerate(parts):
        out.append(p if i % 2 == 0 else f"[{placeholders.shape(m.group(i // 2 + 1))}]")
    return _clip("".join(out))


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXAMPLE_CHARS else text[:_EXAMPLE_CHARS - 1] + "…"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
