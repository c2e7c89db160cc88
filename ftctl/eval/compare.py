"""Compare two versions on the very same examples: a paired test per metric (ftctl.lib.stats),
per slice with Holm's correction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftctl import plugins
from ftctl.errors import UsageError
from ftctl.eval.evalset import EvalSet, load_eval_set
from ftctl.lib.tracking import log_comparison
from ftctl.eval.evaluate import _example_row, _write_reports
from ftctl.eval.guards import guard_scores, load_guards
from ftctl.eval.predict import Predictor, brief_latency
from ftctl.eval.scoring import build_evaluators, expand, failed_note, failed_rows, mean, metric_key, owner, score
from ftctl.eval.target import Target, resolve_target
from ftctl.registry.workspace import locked
from ftctl.lib.log import Log
from ftctl.lib.times import now


@locked
def compare(ws, a: str, b: str, *, model: str | None = None, eval_set: str | None = None,
            artifact: str | None = None, metrics: list[str] | None = None, limit: int | None = None,
            record: bool = True, sources: str | None = None, log: Log = print) -> dict[str, Any]:
    """Paired comparison of two versions on the same examples (see the scripting contract)."""
    from ftctl.lib.stats import FLAG, paired_test

    ta = resolve_target(ws, a, model=model, artifact=artifact)
    tb = resolve_target(ws, b, model=model, artifact=artifact)
    if ta.model != tb.model:
        raise UsageError(f"{a} and {b} are versions of different models",
                         hint="compare versions of one model (they share its eval set)")
    cfg = ws.model(ta.model)
    evalset = load_eval_set(ws, ta.model, eval_set, limit or cfg.eval.limit)
    names = list(metrics or cfg.eval.metrics)
    pa, pb = Predictor(ws, ta, log), Predictor(ws, tb, log)
    evaluators = build_evaluators(ws, ta.model, names, log=log, sources=sources)
    guards = load_guards(ws, ta.model, log)
    notes: list[str] = []
    pairwise = {n: ev for n, ev in evaluators.items() if ev.pairwise}
    single = {n: ev for n, ev in evaluators.items() if n not in pairwise}
    details: dict[str, dict] = {"a": {}, "b": {}}
    preds_a = pa.predict(evalset)
    failed = failed_rows(evalset.examples, pa.failures, ta.version)
    sa = score(single, preds_a, evalset.examples, notes, pa, details["a"], failed={i for i, _ in pa.failures})
    fails_a = pa.failures
    guards_a = guard_scores(pa, guards)
    pa._backend = None  # one model in memory at a time
    preds_b = pb.predict(evalset)
    failed += failed_rows(evalset.examples, pb.failures, tb.version)
    sb = score(single, preds_b, evalset.examples, [], pb, details["b"], failed={i for i, _ in pb.failures})
    for version, fails in ((ta.version, fails_a), (tb.version, pb.failures)):
        if fails:
            notes.insert(0, f"{version}: " + failed_note([r for r in failed if r["version"] == version],
                                                         len(evalset.examples)))
    guards_b = guard_scores(pb, guards)
    from ftctl.lib.generation import reference

    refs = [reference(ex) for ex in evalset.examples]
    skip = {i for i, _ in fails_a} | {i for i, _ in pb.failures}  # a pair needs both answers
    keep = [i for i in range(len(evalset.examples)) if i not in skip]
    for n, ev in pairwise.items():
        shares = expand(ev.judge_pair([preds_a[i] for i in keep], [preds_b[i] for i in keep], [refs[i] for i in keep],
                                      [evalset.examples[i] for i in keep]), keep, len(evalset.examples), (None, None))
        sa[n], sb[n] = [s[0] for s in shares], [s[1] for s in shares]
        extra = ev.details(preds_b, refs, evalset.examples)
        if extra is not None:
            details["b"][n] = extra
            if extra.get("unjudged"):
                notes.append(f"{n}: {extra['unjudged']} example(s) unjudged (unreadable replies after retries)")
    higher = {n: evaluators[owner(n)].higher_is_better for n in sa}
    table = {}
    for n in sa:
        pairs = [(x, y) for x, y in zip(sa[n], sb[n]) if x is not None and y is not None]
        if not pairs:
            notes.append(f"{n}: no example scored for both versions")
            continue
        table[n] = metric_row(paired_test([p[0] for p in pairs], [p[1] for p in pairs], higher_is_better=higher[n],
                                          n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed,
                                          confidence=cfg.eval.gate.confidence), higher[n])
        row = table[n]
        if row["flag"]:
            notes.append(f"{FLAG} {n}: {row['flag']}")
        if row["needed_n"] and row["needed_n"] > row["n"]:
            notes.append(f"{n}: a difference of {abs(row['diff']):.3g} needs about {row['needed_n']} examples to be "
                         f"detected 4 times in 5 (this set has {row['n']}: {row['needed_n'] - row['n']} more)")
    # the metric whose changed examples are shown: the gate's, else the first that moved at all
    moved = [n for n in table if table[n]["ties"] < table[n]["n"]]
    primary = cfg.eval.gate.metric if cfg.eval.gate.metric in table else next(iter(moved or table), None)
    rows = [_example_row(ex, {"a": x, "b": y}, {"a": {k: sa[k][i] for k in table}, "b": {k: sb[k][i] for k in table}})
            for i, (ex, x, y) in enumerate(zip(evalset.examples, preds_a, preds_b))]
    result = {
        "model": ta.model, "a": ta.version, "b": tb.version, "artifact": ta.artifact,
        "eval_set": evalset.name, "eval_set_sha256": evalset.sha256, "n": len(evalset.examples),
        "metrics": table, "slices": _slices(rows, table, cfg.eval), "primary": primary,
        "changed": _most_changed(rows, primary, higher.get(primary, True), cfg.eval.top_changed),
        "details": details, "latency": latency_comparison(pa.latency, pb.latency),
        "guards": compare_guards(guards_a, guards_b, cfg.eval), "notes": notes,
        "failed": {"n": len(failed), "examples": failed},
    }
    paths = _write_reports(ws, result, rows, f"compare-{ta.version}-{tb.version}", kind="compare")
    if record:
        _record_compare(ws, ta, tb, evalset, result, paths)
        if tb.version != "base":  # the comparison joins B's MLflow run (train.report_to: [mlflow])
            training = ws.read_lock().state(tb.model).versions[tb.version].training
            logged = log_comparison(training.get("tracking") or {}, result, cfg.train.mlflow_uri)
            if logged is not None:
                result["tracking"] = {"mlflow": logged}
    return result


def latency_comparison(a: dict | None, b: dict | None) -> dict[str, Any] | None:
    """Both sides' generation latency (median, p95 s/answer, tokens/s) and b's median over a's."""
    if not a or not b:
        return None
    from ftctl.lib.stats import paired_test

    out = {"a": brief_latency(a), "b": brief_latency(b),
           "median_ratio": round(b["median_s"] / a["median_s"], 3) if a["median_s"] else None}
    if len(a.get("seconds", [])) == len(b.get("seconds", [])) > 1:  # the same examples: a paired test
        st = paired_test(a["seconds"], b["seconds"], higher_is_better=False)
        out.update(diff_s=round(st.diff, 4), ci=[round(x, 4) for x in st.ci], p_value=st.p_value, verdict=st.verdict)
    return out



def metric_row(st, higher_is_better: bool) -> dict[str, Any]:
    """One metric's line of the comparison (the scripting contract's ``metrics[name]``)."""
    return {"a": st.a, "b": st.b, "diff": st.diff, "ci": list(st.ci), "p_value": st.p_value, "p_error": st.p_error,
            "verdict": st.verdict, "flag": st.flag, "method": st.method, "interval": st.interval,
            "needed_n": st.needed_n, "wins": st.wins, "ties": st.ties, "losses": st.losses, "n": st.n,
            "higher_is_better": higher_is_better}


def compare_guards(sa: dict[str, list[float]], sb: dict[str, list[float]], cfg) -> dict[str, dict[str, Any]]:
    """A paired test per guard task (b against a) and whether b dropped beyond the margin."""
    from ftctl.lib.stats import WORSE, paired_test

    out = {}
    for name in sa:
        st = paired_test(sa[name], sb[name], n_boot=cfg.bootstrap, seed=cfg.seed, confidence=cfg.gate.confidence)
        row = metric_row(st, True)
        row["margin"] = cfg.guards_margin
        row["failed"] = st.verdict == WORSE and -st.diff > cfg.guards_margin
        out[name] = row
    return out


def _slices(rows: list[dict], table: dict, cfg) -> dict[str, dict[str, dict]]:
    """Per agent type and per source: n, both means and a paired test of each metric. The
    slices of one field are a family of tests: their p-values are Holm-adjusted (``p_holm``),
    and the slice's verdict follows the adjusted value."""
    from ftctl.lib.stats import holm, paired_test, verdict_of

    alpha = 1 - cfg.gate.confidence
    out: dict[str, dict[str, dict]] = {}
    for field in ("agent", "source"):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r[field] or "(none)", []).append(r)
        if len(groups) < 2:
            continue  # one slice is the whole comparison: nothing to break down
        out[field] = {g: {"n": len(rs), "metrics": {}} for g, rs in sorted(groups.items())}
        for m, whole in table.items():
            tests = {}
            for g, rs in groups.items():
                pairs = [(r["scores"]["a"][m], r["scores"]["b"][m]) for r in rs]
                pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
                cell = {"a": mean(x for x, _ in pairs), "b": mean(y for _, y in pairs), "n": len(pairs)}
                cell["diff"] = None if cell["a"] is None else cell["b"] - cell["a"]
                if pairs:
                    st = paired_test([x for x, _ in pairs], [y for _, y in pairs], n_boot=cfg.bootstrap,
                                     higher_is_better=whole["higher_is_better"], seed=cfg.seed,
                                     confidence=cfg.gate.confidence)
                    cell.update(ci=list(st.ci), p_value=st.p_value)
                    tests[g] = cell
                out[field][g]["metrics"][m] = cell
            for (g, cell), p in zip(tests.items(), holm(c["p_value"] for c in tests.values())):
                cell["p_holm"] = p
                cell["verdict"] = verdict_of(p, cell["diff"], alpha, whole["higher_is_better"])
    return out


def _most_changed(rows: list[dict], metric: str | None, higher_is_better: bool, k: int) -> list[dict]:
    if not metric:
        return []

    def delta(r):
        x, y = r["scores"]["a"][metric], r["scores"]["b"][metric]
        return 0.0 if x is None or y is None else (y - x) * (1 if higher_is_better else -1)

    ranked = sorted((r for r in rows if delta(r) != 0), key=lambda r: -abs(delta(r)))[:k]
    return [{"id": r["id"], "prompt": r["prompt"], "reference": r["reference"], "a": r["a"], "b": r["b"],
             "metric": metric, "score_a": r["scores"]["a"][metric], "score_b": r["scores"]["b"][metric]}
            for r in ranked]


def _record_compare(ws, ta: Target, tb: Target, evalset: EvalSet, result: dict, paths: list[Path]) -> None:
    entry = {"time": now(), "against": ta.version, "eval_set": evalset.name, "eval_set_sha256": evalset.sha256,
             "artifact": ta.artifact, "n": result["n"], "report": result["report"],
             "latency": (result["latency"] or {}).get("b"),
             "guards": {k: {f: v[f] for f in ("a", "b", "diff", "p_value", "verdict", "failed")}
                        for k, v in result["guards"].items()},
             "metrics": {k: {f: v[f] for f in ("a", "b", "diff", "ci", "p_value", "verdict")}
                         for k, v in result["metrics"].items()}}

    def update(lock):
        for t, side in ((ta, "a"), (tb, "b")):
            if t.version == "base":
                continue
            v = lock.state(t.model).versions[t.version]
            v.metrics.update({metric_key(k, evalset.name, t.artifact): m[side] for k, m in result["metrics"].items()
                              if not plugins.get("evaluator", owner(k)).pairwise})  # judge shares are relative
        if tb.version != "base":
            lock.state(tb.model).versions[tb.version].evals.append(entry)

    ws.record(f"eval {ta.model} {ta.version} vs {tb.version} ({ta.artifact}, {evalset.name})", update, add=paths)
