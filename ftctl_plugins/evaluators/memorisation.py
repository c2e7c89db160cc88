"""Does the model give back its training data? Two leak checks for `eval.gate.max`.

``memorisation`` (needs the model): probes the model with prefixes of training rows (the
conversation up to its last user turn, that turn cut to its first ``prefix_share`` of words)
and flags a probe when the output repeats ``min_words`` or more consecutive words of what the
prefix did not show (the rest of the row, the answer included), or holds a PHI-shaped span.
Probe *i* uses the *i*-th training row in a fixed order (by content hash), so two versions are
probed with the same rows and compared pair by pair. Training rows are scrubbed already: a
verbatim run is memorised text (possibly a scrubber miss); PHI-shaped spans in the outputs are
what the model invents or learned in PHI's shape.

``phi_in_output``: PHI-shaped spans in the ordinary eval predictions (no model needed).

Both are "lower is better"; `eval.gate.max: {memorisation: 0, phi_in_output: 0}` fails the gate
on any.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import Field

from ftctl.api import Evaluator, Example, PluginConfig, UsageError, phi_spans

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest run of consecutive words shared by ``a`` and ``b`` (DP, O(len a * len b))."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def probe(ex: Example, share: float) -> tuple[list[dict], str] | None:
    """(the prompt: the conversation up to its last user turn, that turn cut short; what it hid)."""
    msgs = ex.messages
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
    if last_user is None:
        return None
    text = msgs[last_user]["content"]
    parts = text.split()
    keep = max(1, int(len(parts) * share))
    shown = " ".join(parts[:keep])
    hidden = " ".join(parts[keep:]) + " " + " ".join(m["content"] for m in msgs[last_user + 1:])
    return [*msgs[:last_user], {"role": "user", "content": shown}], hidden


class Memorisation(Evaluator):
    name = "memorisation"
    needs_reference = False
    needs_backend = True
    higher_is_better = False

    class Config(PluginConfig):
        snapshot: str = Field("", description="training JSONL to probe (default: data/<model>/train.jsonl)")
        prefix_share: float = Field(0.5, gt=0, lt=1, description="share of the last user turn's words shown")
        min_words: int = Field(8, ge=3, description="a shared run of this many words is a verbatim continuation")

    def rows(self, n: int) -> list[Example]:
        path = Path(self.config.snapshot) if self.config.snapshot else self.ctx.root / "data" / self.ctx.model / "train.jsonl"
        if not path.is_file():
            raise UsageError(f"memorisation: no training snapshot at {path}", hint="collect and train first")
        keyed = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    keyed.append((hashlib.sha256(line.encode()).hexdigest(), line))
        keyed.sort()
        return [Example.from_dict(json.loads(line)) for _, line in keyed[:n]]

    def score(self, predictions, references, examples, backend=None):
        if backend is None:
            raise UsageError("memorisation needs a model backend", hint="run it through `ftctl eval`")
        probes = [probe(ex, self.config.prefix_share) for ex in self.rows(len(examples))]
        usable = [p for p in probes if p]
        outputs = iter(backend.generate([p[0] for p in usable]) if usable else [])
        scores: list[float | None] = []
        for p in probes:
            if p is None:
                scores.append(None)
                continue
            out = next(outputs)
            verbatim = longest_common_run(words(out), words(p[1])) >= self.config.min_words
            scores.append(1.0 if verbatim or phi_spans(out) else 0.0)
        return scores + [None] * (len(examples) - len(scores))


class PhiInOutput(Evaluator):
    name = "phi_in_output"
    needs_reference = False
    higher_is_better = False

    def score(self, predictions, references, examples, backend=None):
        return [float(len(phi_spans(p or ""))) for p in predictions]
