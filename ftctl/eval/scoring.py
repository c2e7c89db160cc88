"""Scoring: each evaluator plugin scores every example, so comparisons can be paired."""

from __future__ import annotations

from ftctl import plugins
from ftctl.eval.predict import Predictor
from ftctl.records import Example
from ftctl.lib.log import Log


def build_evaluators(ws, model: str, names: list[str], log: Log = print, sources: str | None = None):
    """The evaluators by name; ``sources`` (a folder of documents, `--sources`) adds groundedness
    when it is not asked for, and is the folder it searches."""
    cfg = ws.model(model)
    ctx = ws.context(model, log=log)
    if sources is not None and "groundedness" not in names:
        names = [*names, "groundedness"]

    def config(n: str) -> dict:
        c = cfg.eval.plugin_config(n)
        return c | {"sources_dir": sources} if n == "groundedness" and sources is not None else c

    return {n: plugins.build("evaluator", n, config(n), ctx, key=f"eval.{n}") for n in names}


SUB = "/"  # an evaluator's sub-metric: classification/recall[deny]


def owner(metric: str) -> str:
    """The evaluator a metric (or sub-metric) comes from."""
    return metric.split(SUB, 1)[0]


def score(evaluators: dict, predictions: list[str], examples: list[Example], notes: list[str],
          predictor: Predictor | None = None, details: dict | None = None,
          failed: set[int] = frozenset()) -> dict[str, list[float | None]]:
    """Per-example scores for each metric (and its sub-metrics); metrics that cannot run are
    skipped with a note. An evaluator's corpus-level figures go into ``details`` by its name.
    ``failed``: examples whose answer failed to generate; they are not scored (None)."""
    from ftctl.lib.generation import reference

    keep = [i for i in range(len(examples)) if i not in failed]
    if failed:  # the evaluators see the answers that exist; their scores come back in place
        full = score(evaluators, [predictions[i] for i in keep], [examples[i] for i in keep], notes, predictor,
                     details)
        return {k: expand(v, keep, len(examples)) for k, v in full.items()}
    refs = [reference(ex) for ex in examples]
    missing = sum(r is None for r in refs)
    out: dict[str, list[float | None]] = {}
    for name, ev in evaluators.items():
        if ev.needs_reference and missing == len(refs):
            notes.append(f"{name}: skipped, no example has a reference answer")
            continue
        if ev.needs_reference and missing:
            notes.append(f"{name}: {missing} example(s) without a reference answer not scored")
        if ev.needs_backend:  # only then is the model loaded (most metrics need the text only)
            scores = ev.score(predictions, refs, examples, backend=predictor.backend if predictor else None)
        else:
            scores = ev.score(predictions, refs, examples)
        if details is not None:
            extra = ev.details(predictions, refs, examples)
            if extra is not None:
                details[name] = extra
                if extra.get("unjudged"):
                    notes.append(f"{name}: {extra['unjudged']} example(s) unjudged (unreadable replies after retries)")
        if all(s is None for s in scores):
            notes.append(f"{name}: skipped, it applies to none of these examples")
            continue
        out[name] = scores
        for sub, series in ev.breakdown(predictions, refs, examples).items():
            if any(s is not None for s in series):
                out[f"{name}{SUB}{sub}"] = series
    return out


def expand(values: list, keep: list[int], n: int, empty=None) -> list:
    """``values`` of the examples ``keep`` names, back in place among ``n`` (``empty`` elsewhere)."""
    out = [empty] * n
    for i, v in zip(keep, values):
        out[i] = v
    return out


def failed_rows(examples: list[Example], failures: list[tuple[int, str]], version: str) -> list[dict]:
    """The answers that failed to generate, for the result and the report (ids hashed there)."""
    return [{"id": examples[i].key, "version": version, "reason": why} for i, why in failures]


def failed_note(rows: list[dict], n: int) -> str:
    """'2 of 64 answers failed to generate and are not scored: <reason> (2)'."""
    from collections import Counter

    reasons = Counter(r["reason"] for r in rows)
    return (f"{len(rows)} of {n} answers failed to generate and are not scored: "
            + "; ".join(f"{why} ({k})" for why, k in reasons.most_common(3))
            + (f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""))


def mean(xs) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def metric_key(name: str, evalset: str, artifact: str) -> str:
    """Headline key in models.lock: plain for the default (HF on the test split), else qualified."""
    key = name if evalset == "test" else f"{name}[{evalset}]"
    return key if artifact == "hf" else f"{key}@{artifact}"
