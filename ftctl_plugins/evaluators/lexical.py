"""Reference-based text metrics: exact match, token F1, BLEU (sacrebleu), ROUGE-L (rouge-score)."""

from __future__ import annotations

import re
import string
from collections import Counter

from pydantic import Field

from ftctl.api import Evaluator, PluginConfig

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation (lowercase, no punctuation/articles/extra spaces).

    Written out because it is four lines and the libraries that carry it (HF `evaluate`)
    would pull a dataset stack into a CLI path.
    """
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def _each(predictions, references, fn):
    return [None if ref is None else fn(pred, ref) for pred, ref in zip(predictions, references)]


class ExactMatch(Evaluator):
    name = "exact_match"

    def score(self, predictions, references, examples, backend=None):
        return _each(predictions, references, lambda p, r: float(normalize(p) == normalize(r)))


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


class TokenF1(Evaluator):
    name = "token_f1"

    def score(self, predictions, references, examples, backend=None):
        return _each(predictions, references, token_f1)


class Bleu(Evaluator):
    """Sentence BLEU (0..100, sacrebleu's smoothing) per example."""

    name = "bleu"

    class Config(PluginConfig):
        tokenize: str = Field("13a", description="sacrebleu's tokenizer")

    def score(self, predictions, references, examples, backend=None):
        from sacrebleu.metrics import BLEU

        bleu = BLEU(tokenize=self.config.tokenize, effective_order=True)
        return _each(predictions, references, lambda p, r: bleu.sentence_score(p, [r]).score)


class RougeL(Evaluator):
    """ROUGE-L F-measure per example (rouge-score, with stemming)."""

    name = "rougeL"

    class Config(PluginConfig):
        stemmer: bool = Field(True, description="stem words before matching (Porter)")

    def score(self, predictions, references, examples, backend=None):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=self.config.stemmer)
        return _each(predictions, references, lambda p, r: scorer.score(r, p)["rougeL"].fmeasure)
