"""Groundedness: the share of an answer's sentences that a source passage supports.

Sources: each example's own source text in ``meta`` (the keys are configurable), and/or a
folder of documents (``sources_dir``; ``ftctl eval --sources DIR``; inline documents in
``POST /evaluate``), split into passages of a few sentences.

Method, per answer sentence (a "claim"; sentences without content words such as "Sure!" make
none):

1. retrieve the ``top_k`` passages most similar to it (TF-IDF cosine, scikit-learn) from the
   example's own source and the folder;
2. the claim is supported by a passage when at least ``threshold`` of its content words occur
   *in that one passage* (not anywhere in the document), every number in it occurs there too,
   and the passage's sentence closest to it does not differ from it in negation (one says
   "not"/"never"/"no", the other does not);
3. the score is the share of supported claims (1.0 for an answer that makes none).

Limits, honestly: this is lexical support, not entailment. A paraphrase with other words is
missed (false "unsupported"), and a claim that recombines a passage's own words into a false
statement, or that negates it in another way ("was rejected" for "was approved"), passes. It is
fast, deterministic and runs offline; for entailment use ``llm_judge`` with a groundedness
rubric. ``threshold`` 0.75 was chosen so that a claim copying a passage with a word changed
passes while one adding a new fact (a name, a place, a number) to a short sentence does not
(tests/eval/test_evaluators.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from ftctl.api import ConfigError, Evaluator, PluginConfig

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# no stop-word list ships with our dependencies (nltk's needs a download), and these few
# function words are what would otherwise count as "supported" in any source
_STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been
being it its this that these those there their they them he she his her we you your i my our
do does did has have had can could will would should may might must so than then also
sure ok okay hello hi thanks please""".split())
_NEGATION = frozenset({"not", "no", "never", "none", "nor", "cannot", "without"})
_TEXT_FILES = (".txt", ".md", ".text", ".rst")
WINDOW = 3  # sentences per passage (overlapping by one)


def claims(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower().replace("n't", " not"))


def _stem(w: str) -> str:
    """Plural and third-person -s folded (leaves/leave, tower/towers): enough for overlap."""
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def content_words(text: str) -> list[str]:
    return [_stem(w) for w in _words(text) if w not in _STOP and w not in _NEGATION]


def passages(text: str) -> list[str]:
    """Overlapping windows of WINDOW sentences: support must be found in one place."""
    sents = claims(text)
    if len(sents) <= WINDOW:
        return [" ".join(sents)] if sents else []
    return [" ".join(sents[i:i + WINDOW]) for i in range(0, len(sents) - 1, WINDOW - 1)]


def supports(passage: str, claim: str, threshold: float) -> bool:
    words = content_words(claim)
    vocab = set(content_words(passage))
    if not words or sum(w in vocab for w in words) / len(words) < threshold:
        return False
    if any(w not in vocab for w in words if any(c.isdigit() for c in w)):
        return False  # a number is a fact on its own: 1889 is not 1899
    # negation is compared with the passage's sentence closest to the claim, not the whole window
    closest = max(claims(passage), key=lambda s: len(set(content_words(s)) & set(words)))
    negated = lambda t: any(w in _NEGATION for w in _words(t))  # noqa: E731
    return negated(claim) == negated(closest)


class Groundedness(Evaluator):
    name = "groundedness"
    needs_reference = False

    class Config(PluginConfig):
        source_keys: list[str] = Field(["source_text", "context", "document"], description="Example.meta keys holding the source text an answer must be grounded in")
        sources_dir: str | None = Field(None, description="a folder of source documents (.txt, .md) searched for every answer (`ftctl eval --sources DIR`)")
        threshold: float = Field(0.75, ge=0, le=1, description="share of a claim's content words one passage must contain")
        top_k: int = Field(5, ge=1, description="passages retrieved per claim")


    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._folder: list[str] = []
        if config.sources_dir:
            folder = Path(config.sources_dir).expanduser()
            folder = folder if folder.is_absolute() else ctx.root / folder
            if not folder.is_dir():
                raise ConfigError(f"eval.groundedness.sources_dir {config.sources_dir!r} is not a folder ({folder})",
                                  hint="give a folder of .txt or .md source documents (--sources DIR)")
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _TEXT_FILES)
            if not files:
                raise ConfigError(f"eval.groundedness.sources_dir {folder} has no .txt or .md document",
                                  hint="put the source documents there as text files")
            for f in files:
                self._folder += passages(f.read_text(errors="replace"))

    def source_of(self, example) -> str | None:
        return next((example.meta[k] for k in self.config.source_keys if example.meta.get(k)), None)

    def unsupported(self, answer: str, pool: list[str]) -> tuple[int, list[str]]:
        """(number of claims, the claims no retrieved passage of ``pool`` supports)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics.pairwise import linear_kernel

        cs = [c for c in claims(answer) if content_words(c)]
        if not cs or not pool:
            return len(cs), list(cs)
        vec = TfidfVectorizer(analyzer=content_words).fit(pool + cs)
        sim = linear_kernel(vec.transform(cs), vec.transform(pool))
        bad = []
        for i, c in enumerate(cs):
            best = sim[i].argsort()[::-1][: self.config.top_k]
            if not any(supports(pool[j], c, self.config.threshold) for j in best):
                bad.append(c)
        return len(cs), bad

    def score(self, predictions, references, examples, backend=None):
        out = []
        for pred, ex in zip(predictions, examples):
            own = self.source_of(ex)
            pool = (passages(own) if own else []) + self._folder
            if not pool:
                out.append(None)  # nothing to ground against
                continue
            n, bad = self.unsupported(pred, pool)
            out.append(1.0 if n == 0 else (n - len(bad)) / n)
        return out

