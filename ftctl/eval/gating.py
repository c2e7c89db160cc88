"""The gate: does a candidate beat its baseline enough to be deployed?"""

from __future__ import annotations

from typing import Any

from ftctl.config import GateConfig
from ftctl.errors import GateFailed, UsageError
from ftctl.eval.compare import compare
from ftctl.registry.versions import resolve, split_ref
from ftctl.lib.log import Log


def check_gate(comparison: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """Does ``b`` beat ``a`` enough? ``{"passed", "metric", "reasons": [...]}`` (never raises)."""
    alpha = 1 - gate.confidence
    reasons = []
    m = comparison["metrics"].get(gate.metric)
    if m is None:
        reasons.append(f"gate metric {gate.metric} was not measured (add it to eval.metrics)")
    else:
        sign = 1 if m.get("higher_is_better", True) else -1
        improvement = sign * m["diff"]
        if improvement <= 0 or m["p_value"] >= alpha:
            need = m.get("needed_n")
            more = (f"; about {need} examples would detect a difference this size (has {m['n']})"
                    if improvement > 0 and need and need > m["n"] else "")
            reasons.append(f"{gate.metric}: {m['b']:.4g} vs {m['a']:.4g} is not a significant improvement "
                           f"(diff {m['diff']:+.4g}, p={m['p_value']:.3g}, needs p<{alpha:.3g}{more})")
        elif improvement < gate.min_improvement:
            reasons.append(f"{gate.metric}: improved by {improvement:.4g}, less than min_improvement "
                           f"{gate.min_improvement:g}")
    for g in gate.guards:
        gm = comparison["metrics"].get(g)
        if gm is None:
            reasons.append(f"guard metric {g} was not measured (add it to eval.metrics)")
            continue
        sign = 1 if gm.get("higher_is_better", True) else -1
        if sign * gm["diff"] < 0 and gm["p_value"] < alpha:
            reasons.append(f"guard {g} got significantly worse ({gm['a']:.4g} -> {gm['b']:.4g}, p={gm['p_value']:.3g})")
    for name, g in (comparison.get("guards") or {}).items():
        if g["failed"]:
            reasons.append(f"guard task {name}: {g['b']:.3g} vs {g['a']:.3g} on {g['n']} questions, a drop of "
                           f"{-g['diff']:.3g} > eval.guards_margin {g['margin']:g} (p={g['p_value']:.3g}): "
                           "the candidate forgot general ability")
    for g, limit in gate.max.items():
        gm = comparison["metrics"].get(g)
        if gm is None or gm.get("b") is None:
            reasons.append(f"gate.max metric {g} was not measured (add it to eval.metrics)")
        elif gm["b"] > limit:
            reasons.append(f"{g}: {gm['b']:.4g} on {comparison['b']} is above gate.max {limit:g}")
    return {"passed": not reasons, "metric": gate.metric, "a": comparison["a"], "b": comparison["b"],
            "reasons": reasons}


def default_baseline(ws, model: str, gate: GateConfig) -> str:
    """What a candidate must beat: gate.against (stable by default), else the base model. A stable
    ``baseline`` (served before ftctl, never evaluated by it) counts as the base model."""
    try:
        against = resolve(ws.read_lock(), model, gate.against)
    except UsageError:
        return "base"
    return "base" if against == "baseline" else against


def gated_compare(ws, candidate: str, *, against: str | None = None, model: str | None = None,
                  record: bool = True, log: Log = print, **kwargs) -> dict[str, Any]:
    """Compare ``candidate`` with its baseline and apply eval.gate; the verdict is ``result["gate"]``."""
    m, _ = split_ref(candidate, model or ws.config.default_model)
    cfg = ws.model(m)
    baseline = against or default_baseline(ws, m, cfg.eval.gate)
    result = compare(ws, baseline, candidate, model=m, record=record, log=log, **kwargs)
    result["gate"] = check_gate(result, cfg.eval.gate)
    return result


def gate_error(result: dict[str, Any]) -> GateFailed:
    reasons = result["gate"]["reasons"]
    more = f"; +{len(reasons) - 1} more reason(s)" if len(reasons) > 1 else ""
    return GateFailed(f"gate failed for {result['model']}@{result['b']} against {result['a']}: {reasons[0]}",
                      hint=f"report: {result['report']}{more}")


def gate(ws, candidate: str, **kwargs) -> dict[str, Any]:
    """:func:`gated_compare` that raises GateFailed (exit code 5) when the gate fails.

    Deploy and cycle call this (under their run lock), so every path applies the same rule.
    """
    result = gated_compare(ws, candidate, **kwargs)
    if not result["gate"]["passed"]:
        raise gate_error(result)
    return result
