"""`ftctl drift`: is new feedback still like what the serving version was trained on?

Reference: the training snapshot of the stable version (the latest version when none is
deployed): the rows of the model's snapshot created up to the moment that version's snapshot
was collected. New: every feedback row the sources hold after that moment, read live.
Ratings per served version compare the rows since the latest collect with those before it (a
version has no ratings before its own training snapshot, so that moment cannot split them).

Signals: prompt length (two-sample Kolmogorov-Smirnov, scipy), agent mix (chi-square on the
counts, scipy; plus the total variation distance), novelty (the share of new prompts' word
n-grams never seen in the reference, beside the same share between two halves of the
reference as its baseline), and the mean rating per served version before and after (the
two-sample permutation test of ftctl.lib.stats). A significant rating drop on the stable version asks
for a retrain, which ``cycle`` does even below ``cycle.min_new_examples``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ftctl.errors import UsageError
from ftctl.lib.log import Log

WORD = re.compile(r"\w+", re.UNICODE)
NOVELTY_MARGIN = 0.25  # new prompts' unseen-n-gram share above the reference's own baseline


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    # word n-grams of a prompt: a set comprehension over a regex; evidently / alibi-detect would
    # bring pandas/tensorflow-sized stacks for a set difference
    words = WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1 if words else 0))}


def novelty(reference: Iterable[str], new: Iterable[str], n: int) -> float | None:
    """Share of the new prompts' n-grams that no reference prompt has."""
    seen: set = set()
    for p in reference:
        seen |= ngrams(p, n)
    total = unseen = 0
    for p in new:
        grams = ngrams(p, n)
        total += len(grams)
        unseen += len(grams - seen)
    return round(unseen / total, 4) if total else None


def _lengths(xs: list[int]) -> dict[str, Any]:
    import numpy as np

    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=float)
    return {"n": len(xs), "mean": round(float(a.mean()), 2), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90))}


def _shares(c: Counter) -> dict[str, float]:
    total = sum(c.values())
    return {k: round(v / total, 4) for k, v in c.most_common()} if total else {}


def reference_point(ws, model: str) -> tuple[str, str]:
    """(version, the time its training snapshot was collected)."""
    from ftctl.registry.versions import sorted_versions

    state = ws.read_lock().state(model)
    if not state.versions:
        raise UsageError(f"model {model!r} has no trained version to compare feedback with",
                         hint="train one first: `ftctl train`")
    stable = state.deployment.stable
    # a stable baseline (what the team ran before ftctl) has no training snapshot: the latest version's
    version = stable if stable in state.versions else sorted_versions(state.versions)[-1]
    entry = state.versions[version]
    cutoff = (entry.dataset or {}).get("created") or entry.created
    return version, cutoff


def drift(ws, model: str | None = None, log: Log = print) -> dict[str, Any]:
    from scipy import stats as sps

    from ftctl import feedback
    from ftctl.registry.served import Resolver
    from ftctl.lib.stats import WORSE, two_sample_test
    from ftctl.records import read_jsonl
    from ftctl.registry.workspace import SPLITS
    from ftctl.lib.times import parse_time

    model = model or ws.config.default_model
    cfg = ws.model(model).cycle.drift
    version, cutoff = reference_point(ws, model)
    cut = parse_time(cutoff)
    state = ws.read_lock().state(model)
    stable = state.deployment.stable
    rating_cut = parse_time((state.dataset or {}).get("created") or cutoff)
    paths = ws.snapshot_paths(model)
    if not paths["train"].is_file():
        raise UsageError(f"the snapshot of {model!r} is not in the work tree ({ws.rel(paths['train'])})",
                         hint="run `ftctl collect` (or `ftctl checkout`) first")

    ref_prompts, ref_agents = [], Counter()
    for s in SPLITS:
        if paths[s].is_file():
            for ex in read_jsonl(paths[s]):
                if ex.created_at is None or ex.created_at <= cut:
                    ref_prompts.append(ex.prompt)
                    ref_agents[ex.agent or "none"] += 1

    resolve = Resolver.of(model, ws.read_lock().state(model))
    new_prompts, new_agents = [], Counter()
    rated: dict[str, dict[str, list[float]]] = {}

    def visit(ex) -> None:
        after = ex.created_at is None or ex.created_at > cut
        if after:
            new_prompts.append(ex.prompt)
            new_agents[ex.agent or "none"] += 1
        v = resolve(ex.served_model)
        if v and ex.rating is not None:
            late = ex.created_at is None or ex.created_at > rating_cut
            rated.setdefault(v, {"before": [], "after": []})["after" if late else "before"].append(ex.rating)

    counts = feedback.scan(ws, model, None, visit, log)
    log(f"drift of {model}: {len(new_prompts)} new row(s) since {cutoff} against the {len(ref_prompts)} "
        f"of {model}@{version}'s snapshot")

    out: dict[str, Any] = {"model": model, "reference": {"version": version, "since": cutoff, "rows": len(ref_prompts)},
                           "ratings_split_at": rating_cut.isoformat(),
                           "new": {"rows": len(new_prompts), "read": counts["read"], "rejected": counts["rejected"]}}
    ref_len = [len(WORD.findall(p)) for p in ref_prompts]
    new_len = [len(WORD.findall(p)) for p in new_prompts]
    pl = {"reference": _lengths(ref_len), "new": _lengths(new_len), "p_value": None, "drifted": False}
    if len(ref_len) >= 2 and len(new_len) >= 2:
        pl["p_value"] = round(float(sps.ks_2samp(ref_len, new_len).pvalue), 6)
        pl["drifted"] = pl["p_value"] < 1 - cfg.confidence
    out["prompt_length"] = pl

    ag = {"reference": _shares(ref_agents), "new": _shares(new_agents), "tvd": None, "p_value": None, "drifted": False}
    if ref_agents and new_agents:
        keys = sorted(set(ref_agents) | set(new_agents))
        ag["tvd"] = round(0.5 * sum(abs(ag["reference"].get(k, 0) - ag["new"].get(k, 0)) for k in keys), 4)
        if len(keys) > 1:
            table = [[ref_agents[k] for k in keys], [new_agents[k] for k in keys]]
            ag["p_value"] = round(float(sps.chi2_contingency(table).pvalue), 6)
            ag["drifted"] = ag["p_value"] < 1 - cfg.confidence
    out["agents"] = ag

    half = len(ref_prompts) // 2
    nov = {"ngram": cfg.ngram, "new": novelty(ref_prompts, new_prompts, cfg.ngram),
           "baseline": novelty(ref_prompts[:half], ref_prompts[half:], cfg.ngram) if half else None}
    nov["drifted"] = bool(nov["new"] is not None and nov["new"] > (nov["baseline"] or 0) + NOVELTY_MARGIN)
    out["novelty"] = nov

    per_version = {}
    for v, r in sorted(rated.items()):
        row = {"before": {"n": len(r["before"])}, "after": {"n": len(r["after"])}, "verdict": None}
        for k in ("before", "after"):
            if r[k]:
                row[k]["mean"] = round(sum(r[k]) / len(r[k]), 3)
        if len(r["before"]) >= cfg.min_rated and len(r["after"]) >= cfg.min_rated:
            t = two_sample_test(r["before"], r["after"], confidence=cfg.confidence)
            row.update(diff=round(t.diff, 3), ci=[round(t.ci[0], 3), round(t.ci[1], 3)],
                       p_value=round(t.p_value, 4), verdict=t.verdict)
        per_version[v] = row
    out["ratings"] = per_version
    drop = bool(stable and per_version.get(stable, {}).get("verdict") == WORSE)
    out["stable_drop"] = drop
    out["drifted"] = [k for k in ("prompt_length", "agents", "novelty") if out[k]["drifted"]] + (["ratings"] if drop else [])
    out["retrain"] = drop and cfg.retrain_on_drop
    if drop:
        r = per_version[stable]
        log(f"[yellow]users rate the stable {model}@{stable} lower than before: {r['before']['mean']} -> "
            f"{r['after']['mean']} (CI {r['ci']})[/]")
    return out
