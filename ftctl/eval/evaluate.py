"""Evaluate one version: generate, score, write the reports, record the headline numbers.

Callers hold the workspace run lock (the CLI's ``app.mutate``; deploy and cycle already hold it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftctl.eval.evalset import EvalSet, load_eval_set
from ftctl.eval.predict import Predictor, brief_latency, settings_of
from ftctl.eval.scoring import build_evaluators, failed_note, failed_rows, mean, metric_key, owner, score
from ftctl.eval.target import Target, resolve_target
from ftctl.records import Example
from ftctl.registry.workspace import locked
from ftctl.lib.log import Log
from ftctl.lib.times import now


@locked
def evaluate(ws, ref: str, *, model: str | None = None, eval_set: str | None = None,
             artifact: str | None = None, metrics: list[str] | None = None, limit: int | None = None,
             record: bool = True, sources: str | None = None, log: Log = print) -> dict[str, Any]:
    """Score one version. Returns ``{"version", "n", "metrics": {name: mean}, "report", ...}``."""

    target = resolve_target(ws, ref, model=model, artifact=artifact)
    cfg = ws.model(target.model)
    evalset = load_eval_set(ws, target.model, eval_set, limit or cfg.eval.limit)
    names = list(metrics or cfg.eval.metrics)
    predictor = Predictor(ws, target, log)
    evaluators = build_evaluators(ws, target.model, names, log=log, sources=sources)  # bad config fails before generating
    preds = predictor.predict(evalset)
    failed = failed_rows(evalset.examples, predictor.failures, target.version)
    notes: list[str] = [failed_note(failed, len(preds))] if failed else []
    details: dict = {}
    scores = score(evaluators, preds, evalset.examples, notes, predictor, details,
                   failed={i for i, _ in predictor.failures})
    result = {
        "model": target.model, "version": target.version, "artifact": target.artifact,
        "eval_set": evalset.name, "eval_set_sha256": evalset.sha256, "n": len(evalset.examples),
        "metrics": {k: mean(v) for k, v in scores.items()},
        "higher_is_better": {k: evaluators[owner(k)].higher_is_better for k in scores},
        "details": details, "latency": predictor.latency,
        "notes": notes, "settings": settings_of(cfg).__dict__ | {"stop": list(cfg.eval.stop)},
        "failed": {"n": len(failed), "examples": failed},
    }
    result["vs_hf"] = _vs_hf(ws, target, evalset, result["metrics"])
    examples = [_example_row(ex, {"prediction": p}, {k: v[i] for k, v in scores.items()})
                for i, (ex, p) in enumerate(zip(evalset.examples, preds))]
    paths = _write_reports(ws, result, examples, f"eval-{target.version}", kind="eval")
    if record:
        _record_eval(ws, target, evalset, result, paths)
    return result


def _write_reports(ws, result: dict, rows: list[dict], stem: str, *, kind: str) -> list[Path]:
    """JSON + Markdown + HTML, written only once every score is in (never a partial report).

    What a report quotes is scrubbed and its example ids (conversation keys, some of them
    e-mail addresses) are keyed hashes, and so is what ``result`` returns (``eval --json``, the
    job results the service stores): the caller gets the report's text, never the raw one."""
    from ftctl.eval import report
    from ftctl.lib.scrub import for_reports
    from ftctl.registry.secret import report_id

    stem += _suffix(result["eval_set"], result["artifact"])
    secret = ws.secret()
    scrub, seen = for_reports(ws, result["model"]), {}

    def once(text: str) -> str:  # `changed` quotes rows of `examples`: scrub each text once
        if text not in seen:
            seen[text] = scrub(text)
        return seen[text]

    def hashed(rs: list[dict]) -> list[dict]:
        return [{**r, "id": report_id(secret, str(r["id"]))} if r.get("id") is not None else r for r in rs]

    failed = result.get("failed") or {"n": 0, "examples": []}
    data = report.scrubbed(result | {"examples": hashed(rows), "changed": hashed(result.get("changed") or []),
                                     "failed": failed | {"examples": hashed(failed["examples"])},
                                     "complete": True}, once)
    if "changed" not in result:
        del data["changed"]
    paths = report.write_all(ws.reports_dir(result["model"]), stem, data, kind=kind)
    result.update({k: data[k] for k in ("changed", "failed", "scrubbed") if k in data})
    result["report"] = ws.rel(paths["html"])
    result["reports"] = {k: ws.rel(p) for k, p in paths.items()}
    return list(paths.values())


def _suffix(evalset: str, artifact: str) -> str:
    s = "" if evalset == "test" else f"-{evalset}"
    return s + ("" if artifact == "hf" else "-" + artifact.replace(":", "-"))


def _example_row(ex: Example, preds: dict, scores: dict) -> dict[str, Any]:
    from ftctl.lib.generation import reference

    return {"id": ex.key, "agent": ex.agent, "source": ex.source, "prompt": ex.prompt,
            "reference": reference(ex), **preds, "scores": scores}


def _vs_hf(ws, target: Target, evalset: EvalSet, metrics: dict) -> dict | None:
    """For a GGUF file: the quantisation's cost against the same version's HF result, if known."""
    if target.artifact == "hf" or target.version == "base":
        return None
    entry = ws.read_lock().state(target.model).versions[target.version]
    hf = next((e for e in reversed(entry.evals) if e.get("artifact") == "hf"
               and e.get("eval_set_sha256") == evalset.sha256 and not e.get("against")), None)
    if not hf:
        return None
    return {k: {"hf": hf["metrics"][k], "gguf": v, "diff": None if v is None else v - hf["metrics"][k]}
            for k, v in metrics.items() if hf["metrics"].get(k) is not None}


def _record_eval(ws, target: Target, evalset: EvalSet, result: dict, paths: list[Path]) -> None:
    entry = {"time": now(), "eval_set": evalset.name, "eval_set_sha256": evalset.sha256,
             "artifact": target.artifact, "n": result["n"], "metrics": result["metrics"],
             "latency": brief_latency(result["latency"]), "report": result["report"]}
    if result["failed"]["n"]:
        entry["failed"] = result["failed"]["n"]

    def update(lock):
        if target.version == "base":
            return  # the base has no lock entry; its report is still committed
        v = lock.state(target.model).versions[target.version]
        v.metrics.update({metric_key(k, evalset.name, target.artifact): x for k, x in result["metrics"].items()})
        v.evals.append(entry)

    ws.record(f"eval {target.model} {target.version} ({target.artifact}, {evalset.name})", update, add=paths)
