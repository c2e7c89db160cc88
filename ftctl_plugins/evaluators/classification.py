"""Classification: answers that are decisions (approve/deny, a code, a category) against experts'.

The label is extracted from each answer with a regex (by default: the first of the configured
labels as a whole word); the expert's label comes from an Example.meta key, or from the
reference answer with the same regex. An answer whose label cannot be extracted is *unparsed*:
counted per side, never scored as wrong (a model that stops answering in the format should be
seen, not mistaken for one that decides badly).

Per example the score is 1 when the labels agree (accuracy). For paired comparisons each label
also gives two per-example series on a fixed set of examples, so the sign-flip test applies:
``recall[L]`` on the examples the expert labelled L (1 - the false-negative rate) and
``specificity[L]`` on the others (1 - the false-positive rate). Precision and F1 depend on what
each version predicted, so they are reported per side (``details``), not tested in pairs.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from ftctl.api import Evaluator, PluginConfig


class Classification(Evaluator):
    name = "classification"
    needs_reference = False  # the expert's label may sit in meta instead of a reference answer

    class Config(PluginConfig):
        labels: list[str] = Field([], description="the decision labels, e.g. [approve, deny, refer]; "
                                                  "an extracted label outside them is unparsed")
        pattern: str | None = Field(None, description="regex extracting the label (its first group, else the "
                                                      "whole match); default: the labels as whole words")
        reference_key: str | None = Field(None, description="Example.meta key with the expert's label; "
                                                            "default: extracted from the reference answer")
        ignore_case: bool = Field(True, description="compare labels case-insensitively")

        @field_validator("pattern")
        @classmethod
        def _compiles(cls, v):
            if v is not None:
                try:
                    re.compile(v)
                except re.error as e:
                    raise ValueError(f"pattern is not a valid regex: {e}") from None
            return v

        @model_validator(mode="after")
        def _labels_or_pattern(self):
            if not self.labels and not self.pattern:
                raise ValueError("set labels (the decisions, e.g. [approve, deny]) or a pattern extracting them")
            return self

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        flags = re.I if config.ignore_case else 0
        pattern = config.pattern or r"\b(" + "|".join(re.escape(x) for x in sorted(config.labels, key=len,
                                                                                  reverse=True)) + r")\b"
        self._re = re.compile(pattern, flags)
        self._known = {self._norm(x): x for x in config.labels}

    def _norm(self, label: str) -> str:
        label = label.strip()
        return label.lower() if self.config.ignore_case else label

    def label(self, text: str | None) -> str | None:
        """The label in ``text`` (its configured spelling), or None when there is none."""
        if not text:
            return None
        m = self._re.search(text)
        if not m:
            return None
        found = self._norm(m.group(1) if m.groups() and m.group(1) is not None else m.group(0))
        if self._known:
            return self._known.get(found)
        return found

    def expert(self, ref: str | None, example) -> str | None:
        if self.config.reference_key:
            value = example.meta.get(self.config.reference_key)
            return None if value is None else self.label(str(value)) if self._known else self._norm(str(value))
        return self.label(ref)

    def _pairs(self, predictions, references, examples) -> list[tuple[str | None, str | None]]:
        """(expert label, predicted label) per example."""
        return [(self.expert(r, ex), self.label(p)) for p, r, ex in zip(predictions, references, examples)]

    def score(self, predictions, references, examples, backend=None):
        return [None if t is None or p is None else float(t == p)
                for t, p in self._pairs(predictions, references, examples)]

    def breakdown(self, predictions, references, examples) -> dict[str, list[float | None]]:
        pairs = self._pairs(predictions, references, examples)
        out: dict[str, list[float | None]] = {}
        for lab in self._labels(pairs):
            out[f"recall[{lab}]"] = [None if t != lab or p is None else float(p == lab) for t, p in pairs]
            out[f"specificity[{lab}]"] = [None if t is None or t == lab or p is None else float(p != lab)
                                          for t, p in pairs]
        return out

    def details(self, predictions, references, examples) -> dict[str, Any]:
        """Per-label precision, recall, F1, false-positive and false-negative rates, the confusion
        matrix (rows: the expert's label, columns: the answer's), and what could not be scored."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        pairs = self._pairs(predictions, references, examples)
        scored = [(t, p) for t, p in pairs if t is not None and p is not None]
        labels = self._labels(pairs)
        out: dict[str, Any] = {"labels": labels, "scored": len(scored),
                               "unparsed": sum(t is not None and p is None for t, p in pairs),
                               "no_expert_label": sum(t is None for t, _ in pairs)}
        if not scored:
            return out
        y_true, y_pred = [t for t, _ in scored], [p for _, p in scored]
        cm = confusion_matrix(y_true, y_pred, labels=labels)
        prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        total = cm.sum()
        per = {}
        for i, lab in enumerate(labels):
            tp, fn, fp = cm[i, i], cm[i].sum() - cm[i, i], cm[:, i].sum() - cm[i, i]
            tn = total - tp - fn - fp
            per[lab] = {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                        "fpr": float(fp / (fp + tn)) if fp + tn else None,
                        "fnr": float(fn / (fn + tp)) if fn + tp else None, "support": int(support[i])}
        out.update(accuracy=float(sum(t == p for t, p in scored) / len(scored)), per_label=per,
                   confusion={lab: {col: int(cm[i, j]) for j, col in enumerate(labels)} for i, lab in enumerate(labels)})
        return out

    def _labels(self, pairs) -> list[str]:
        if self.config.labels:
            return list(self.config.labels)
        return sorted({x for pair in pairs for x in pair if x is not None})
