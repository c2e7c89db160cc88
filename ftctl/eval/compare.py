"""Compare two versions on the very same examples (paired bootstrap per metric)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftctl import plugins
from ftctl.errors import UsageError
from ftctl.eval.evalset import EvalSet, load_eval_set
from ftctl.eval.evaluate import _example_row, _write_reports
from ftctl.eval.predict import Predictor
from ftctl.eval.scoring import build_evaluators, mean, metric_key, score
from ftctl.eval.target import Target, resolve_target
from ftctl.registry.workspace import locked
from ftctl.lib.log import Log
from ftctl.lib.times import now


@locked
def compare(ws, a: str, b: str, *, model: str | None = None, eval_set: str | None = None,
            artifact: str | None = None, metrics: list[str] | None = None, limit: int | None = None,
            record: bool = True, log: Log = print) -> dict[str, Any]:
    """Paired comparison of two versions on the same examples (see the scripting contract)."""
    from ftctl.lib.stats import paired_bootstrap

    ta = resolve_target(ws, a, model=model, artifact=artifact)
    tb = resolve_target(ws, b, model=model, artifact=artifact)
    if ta.model != tb.model:
        raise UsageError(f"{a} and {b} are versions of different models",
                         hint="compare versions of one model (they share its eval set)")
    cfg = ws.model(ta.model)
    evalset = load_eval_set(ws, ta.model, eval_set, limit or cfg.eval.limit)
    names = list(metrics or cfg.eval.metrics)
    pa, pb = Predictor(ws, ta, log), Predictor(ws, tb, log)
    evaluators = build_evaluators(ws, ta.model, names, log=log)
    notes: list[str] = []
    pairwise = {n: ev for n, ev in evaluators.items() if ev.pairwise}
    single = {n: ev for n, ev in evaluators.items() if n not in pairwise}
    preds_a = pa.predict(evalset)
    sa = score(single, preds_a, evalset.examples, notes, pa)
    pa._backend = None  # one model in memory at a time
    preds_b = pb.predict(evalset)
    sb = score(single, preds_b, evalset.examples, [], pb)
    from ftctl.lib.generation import reference

    refs = [reference(ex) for ex in evalset.examples]
    for n, ev in pairwise.items():
        shares = ev.judge_pair(preds_a, preds_b, refs, evalset.examples)
        sa[n], sb[n] = [s[0] for s in shares], [s[1] for s in shares]
    higher = {n: evaluators[n].higher_is_better for n in sa}
    table = {}
    for n in sa:
        pairs = [(x, y) for x, y in zip(sa[n], sb[n]) if x is not None and y is not None]
        if not pairs:
            notes.append(f"{n}: no example scored for both versions")
            continue
        st = paired_bootstrap([p[0] for p in pairs], [p[1] for p in pairs], higher_is_better=higher[n],
                              n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed)
        table[n] = {"a": st.a, "b": st.b, "diff": st.diff, "ci": list(st.ci), "p_value": st.p_value,
                    "verdict": st.verdict, "wins": st.wins, "ties": st.ties, "losses": st.losses,
                    "n": st.n, "higher_is_better": higher[n]}
    # the metric whose changed examples are shown: the gate's, else the first that moved at all
    moved = [n for n in table if table[n]["ties"] < table[n]["n"]]
    primary = cfg.eval.gate.metric if cfg.eval.gate.metric in table else next(iter(moved or table), None)
    rows = [_example_row(ex, {"a": x, "b": y}, {"a": {k: sa[k][i] for k in table}, "b": {k: sb[k][i] for k in table}})
            for i, (ex, x, y) in enumerate(zip(evalset.examples, preds_a, preds_b))]
    result = {
        "model": ta.model, "a": ta.version, "b": tb.version, "artifact": ta.artifact,
        "eval_set": evalset.name, "eval_set_sha256": evalset.sha256, "n": len(evalset.examples),
        "metrics": table, "slices": _slices(rows, table), "primary": primary,
        "changed": _most_changed(rows, primary, higher.get(primary, True), cfg.eval.top_changed),
        "notes": notes,
    }
    paths = _write_reports(ws, result, rows, f"compare-{ta.version}-{tb.version}", kind="compare")
    if record:
        _record_compare(ws, ta, tb, evalset, result, paths)
    return result


def _slices(rows: list[dict], table: dict) -> dict[str, dict[str, dict]]:
    """Per agent type and per source: n and both means of each metric."""
    out: dict[str, dict[str, dict]] = {}
    for field in ("agent", "source"):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r[field] or "(none)", []).append(r)
        if len(groups) < 2 and field == "agent" and "(none)" in groups:
            continue  # no agent types recorded: nothing to break down
        out[field] = {
            g: {"n": len(rs), "metrics": {m: {"a": mean(r["scores"]["a"][m] for r in rs),
                                              "b": mean(r["scores"]["b"][m] for r in rs)} for m in table}}
            for g, rs in sorted(groups.items())
        }
        for g in out[field].values():
            for v in g["metrics"].values():
                v["diff"] = None if v["a"] is None or v["b"] is None else v["b"] - v["a"]
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
             "metrics": {k: {f: v[f] for f in ("a", "b", "diff", "ci", "p_value", "verdict")}
                         for k, v in result["metrics"].items()}}

    def update(lock):
        for t, side in ((ta, "a"), (tb, "b")):
            if t.version == "base":
                continue
            v = lock.state(t.model).versions[t.version]
            v.metrics.update({metric_key(k, evalset.name, t.artifact): m[side] for k, m in result["metrics"].items()
                              if not plugins.get("evaluator", k).pairwise})  # judge shares are relative
        if tb.version != "base":
            lock.state(tb.model).versions[tb.version].evals.append(entry)

    ws.record(f"eval {ta.model} {ta.version} vs {tb.version} ({ta.artifact}, {evalset.name})", update, add=paths)
