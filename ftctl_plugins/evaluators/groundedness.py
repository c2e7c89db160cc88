"""Groundedness: the share of an answer's claims that its source document supports.

For document-derived data, each example carries its source passage in ``meta`` (the key is
configurable). A claim is one sentence of the answer; it is supported when most of its content
words appear in the source. Lexical support is a deliberate, fast, deterministic proxy: an NLI
model or the LLM judge is the heavier alternative (``llm_judge`` with a groundedness rubric).
"""

from __future__ import annotations

import re

from pydantic import Field

from ftctl.api import Evaluator, PluginConfig

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# no stop-word list ships with our dependencies (nltk's needs a download), and these few
# function words are what would otherwise count as "supported" in any source
_STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been
being it its this that these those there their they them he she his her we you your i my our not
no yes do does did has have had can could will would should may might must so than then also
sure ok okay hello hi thanks please""".split())


def claims(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP]


def unsupported_claims(answer: str, source: str, threshold: float) -> tuple[int, list[str]]:
    """(number of claims, the claims the source does not support)."""
    vocab = set(content_words(source))
    found, unsupported = 0, []
    for claim in claims(answer):
        words = content_words(claim)
        if not words:
            continue  # "Sure!" makes no claim
        found += 1
        if sum(w in vocab for w in words) / len(words) < threshold:
            unsupported.append(claim)
    return found, unsupported


class Groundedness(Evaluator):
    name = "groundedness"
    needs_reference = False

    class Config(PluginConfig):
        source_keys: list[str] = Field(["source_text", "context", "document"], description="Example.meta keys holding the source text an answer must be grounded in")
        threshold: float = Field(0.6, description="share of a claim's content words the source must contain")

    def source_of(self, example) -> str | None:
        return next((example.meta[k] for k in self.config.source_keys if example.meta.get(k)), None)

    def score(self, predictions, references, examples, backend=None):
        out = []
        for pred, ex in zip(predictions, examples):
            source = self.source_of(ex)
            if source is None:
                out.append(None)  # not document-derived: nothing to ground against
                continue
            n, bad = unsupported_claims(pred, source, self.config.threshold)
            out.append(1.0 if n == 0 else (n - len(bad)) / n)
        return out
