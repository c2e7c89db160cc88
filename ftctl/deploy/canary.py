"""`ftctl canary check`: judge a live canary on what users say, then promote, step up, hold or roll back.

Evidence, from the moment the canary reached its current traffic share (each step is judged on
its own traffic):

- users' ratings (or rewards) of the answers each version served, read live from the model's
  sources and attributed through ``served_model`` (deploy serves ``model@vX.Y``); canary and
  stable are compared with a two-sample permutation test (ftctl.lib.stats; the verdict) and a
  bootstrap interval (stepping up needs its lower end above -max_drop);
- server errors: the share of 5xx answers per side, from the deployer's router record
  (``Deployer.traffic``: nginx's access log for pm2, the router's own for lora_swap), compared
  as two proportions;
- generation latency (ms per predicted token) from llama-server's Prometheus ``/metrics``
  (``--metrics``), canary against stable, over the stage only: deploy records both servers'
  counters when the stage begins and the check takes the difference. An endpoint that is down
  holds the canary (never a crash); a canary failing its health check is rolled back.

The decision and its evidence are appended to models.lock's history (``canary check``); the
action itself goes through ftctl.deploy.rollout's promote / deploy / rollback, which record theirs.
The /metrics reading is ftctl.deploy.metrics'.
"""

from __future__ import annotations

import math
from typing import Any

from ftctl.deploy import rollout
from ftctl.deploy.metrics import SIDES, scrape_sides
from ftctl.errors import ExternalToolError, UsageError
from ftctl.lib.log import Log
from ftctl.lib.times import parse_time

PROMOTE, STEP, HOLD, ROLLBACK = "promote", "step", "hold", "rollback"
ACTION = "canary check"


def stage(history: list[dict], version: str) -> dict:
    """The history entry of the canary getting its current share (its latest successful `canary`
    change): its ``began`` (or, in older entries, its ``time``) starts the evidence window, its
    ``counters`` the latency window."""
    for h in reversed(history):
        if h.get("action") == "canary" and h.get("version") == version and h.get("result", "ok") == "ok":
            return h
    return {}


# --- evidence -----------------------------------------------------------------------------------


def ratings(ws, model: str, versions: dict[str, str], since: str | None, signal: str, log: Log) -> dict[str, Any]:
    """Scores per role ({"stable": [...], "canary": [...]}) of rows newer than ``since``."""
    from ftctl import feedback
    from ftctl.registry.served import Attribution, Resolver

    state = ws.read_lock().state(model)
    resolve, seen = Resolver.of(model, state), Attribution()
    role_of = {v: r for r, v in versions.items()}
    rows: dict[str, list] = {r: [] for r in versions}

    def visit(ex) -> None:
        v = resolve(ex.served_model)
        seen.add(ex.served_model, v)
        if v in role_of:
            rows[role_of[v]].append(ex)

    counts = feedback.scan(ws, model, since, visit, log)
    if signal == "auto":
        signal = "rating" if any(ex.rating is not None for r in rows.values() for ex in r) else "reward"
    scores = {r: [s for s in (feedback.score(ex, signal) for ex in exs) if s is not None] for r, exs in rows.items()}
    return {"signal": signal, "scores": scores, "rows": {r: len(x) for r, x in rows.items()},
            "served": seen.to_dict(), **counts}


def _window(now: dict, start: dict | None) -> dict[str, Any]:
    """ms/token of what the server generated since the stage began (Prometheus' rate() rules:
    a counter that went back means the server restarted, so all it counted is in the stage)."""
    if start and now["tokens"] >= start["tokens"] and now["seconds"] >= start["seconds"]:
        tokens, seconds, window = now["tokens"] - start["tokens"], now["seconds"] - start["seconds"], "stage"
    else:
        tokens, seconds, window = now["tokens"], now["seconds"], "since restart" if start else "lifetime"
    return {"window": window, "window_tokens": tokens,
            "ms_per_token": round(1000 * seconds / tokens, 3) if tokens else None}


def latency(apps: list[dict], cfg, start: dict[str, dict] | None = None) -> dict[str, Any]:
    """Per side: the deployer's health probe and ms/token over the stage; and canary/stable."""
    out: dict[str, Any] = {role: {**m, **_window(m, (start or {}).get(role))} if m["ok"] else dict(m)
                           for role, m in scrape_sides(apps, cfg).items()}
    for app in apps:
        if app.get("role") in SIDES:
            out.setdefault(app["role"], {})["healthy"] = app.get("healthy")  # the deployer's own probe
    ports = {app["role"]: app.get("port") for app in apps if app.get("role") in SIDES}
    s, c = (out.get(r, {}).get("ms_per_token") for r in SIDES)
    out["ratio"] = round(c / s, 3) if s and c else None
    if ports.get("stable") and ports.get("stable") == ports.get("canary"):
        out["ratio"] = None  # one server answers for both: its counters cannot tell them apart
        out["note"] = "one server serves both versions: latency is not judged per version"
    return out


def traffic(dep, since: str | None) -> dict[str, Any] | None:
    """Requests and 5xx answers per side since ``since``, from the deployer's router record;
    None when the deployer keeps none. An unreadable record is evidence too (it holds)."""
    try:
        seen = dep.traffic(parse_time(since).timestamp() if since else 0.0)
    except ExternalToolError as e:
        return {"ok": False, "error": e.message}
    if seen is None:
        return None
    return {"ok": True, **{r: seen[r].to_dict() for r in SIDES if r in seen}}


# --- the decision -------------------------------------------------------------------------------


def next_step(steps: list[int], percent: int) -> int | None:
    """The next traffic share above ``percent``; None means the next move is a promotion."""
    up = sorted(p for p in steps if p > percent)
    return up[0] if up and up[0] < 100 else None


def more_needed(n: int, half_width: float, target: float) -> int:
    """Rated answers still needed for the interval to shrink to ``target`` (width ~ 1/sqrt(n))."""
    if target <= 0 or half_width <= 0:
        return n  # no estimate: ask for as many again
    return max(1, math.ceil(n * (half_width / target) ** 2) - n)


def decide(cfg, scores: dict[str, list[float]], ops: dict[str, Any], percent: int,
           higher_is_better: bool = True) -> dict[str, Any]:
    """{"decision", "reason", "needs", "percent", "test", "errors"} from the evidence; pure, for testing."""
    from ftctl.lib.stats import WORSE, two_sample_test

    n_s, n_c = len(scores.get("stable", [])), len(scores.get("canary", []))
    test = None
    if n_s >= 2 and n_c >= 2:
        t = two_sample_test(scores["stable"], scores["canary"], higher_is_better=higher_is_better,
                            n_boot=cfg.bootstrap, confidence=cfg.confidence)
        test = {"stable_mean": round(t.a, 4), "canary_mean": round(t.b, 4), "diff": round(t.diff, 4),
                "ci": [round(t.ci[0], 4), round(t.ci[1], 4)], "p_value": round(t.p_value, 4),
                "p_error": round(t.p_error, 4), "method": t.method, "verdict": t.verdict, "flag": t.flag}
    errors = error_test(cfg, ops.get("traffic"))
    out = {"test": test, "errors": errors, "needs": None, "percent": percent}
    if ops.get("canary", {}).get("healthy") is False:  # failing its health check: no rating can save it
        return {**out, "decision": ROLLBACK, "percent": 0,
                "reason": "the canary fails its health check: users on it get errors"}
    if errors and errors["verdict"] == WORSE and errors["diff"] > cfg.max_error_increase:
        return {**out, "decision": ROLLBACK, "percent": 0,
                "reason": f"the canary fails more requests: 5xx {errors['canary_rate']:.1%} vs stable "
                          f"{errors['stable_rate']:.1%} (CI of the difference [{errors['ci'][0]:+.1%}, "
                          f"{errors['ci'][1]:+.1%}], limit +{cfg.max_error_increase:.1%}; "
                          f"n {errors['n'][1]}/{errors['n'][0]} requests)"}
    enough = n_s >= cfg.min_rated and n_c >= cfg.min_rated
    if enough and test["verdict"] == WORSE:
        return {**out, "decision": ROLLBACK, "percent": 0,
                "reason": f"users rate the canary worse: {test['canary_mean']:.2f} vs {test['stable_mean']:.2f} "
                          f"(diff {test['diff']:+.2f}, CI [{test['ci'][0]:+.2f}, {test['ci'][1]:+.2f}], "
                          f"n {n_c}/{n_s})"}
    ratio = ops.get("ratio")
    if ratio is not None and ratio > cfg.max_latency_ratio:
        return {**out, "decision": ROLLBACK, "percent": 0,
                "reason": f"the canary is slower: {ratio:.2f}x stable's ms/token (limit {cfg.max_latency_ratio:g}x)"}
    if not enough:
        need = max(cfg.min_rated - n_c, 0) + max(cfg.min_rated - n_s, 0)
        who = [f"{cfg.min_rated - n:d} more from the {r}" for r, n in (("canary", n_c), ("stable", n_s))
               if n < cfg.min_rated]
        return {**out, "decision": HOLD, "needs": need,
                "reason": f"too little evidence: needs {need} more rated answers ({', '.join(who)}; "
                          f"has canary {n_c}, stable {n_s}, wants {cfg.min_rated} each)"}
    down = [f"{r} {ops[r]['url']}: {ops[r]['error']}" for r in SIDES if not ops.get(r, {}).get("ok")]
    if down:
        return {**out, "decision": HOLD,
                "reason": "cannot judge latency, /metrics unavailable (" + "; ".join(down)
                          + "); start llama-server with --metrics"}
    tr = ops.get("traffic")
    if tr is not None and not tr["ok"]:
        return {**out, "decision": HOLD, "reason": f"cannot judge server errors: {tr['error']}"}
    if tr is not None and not tr.get("canary", {}).get("requests"):
        return {**out, "decision": HOLD,
                "reason": "the access log has no requests of the canary in this stage, though users rated "
                          "its answers: does a server or location block set its own access_log? (docs/deploy.md)"}
    lo, hi = test["ci"]
    if lo >= -cfg.max_drop:
        nxt = next_step(cfg.steps, percent)
        why = (f"canary rated {test['canary_mean']:.2f} vs stable {test['stable_mean']:.2f} "
               f"(diff {test['diff']:+.2f}, CI [{lo:+.2f}, {hi:+.2f}] above -{cfg.max_drop:g}; n {n_c}/{n_s})"
               + (f", {ratio:.2f}x stable's ms/token" if ratio is not None else ""))
        if nxt is None:
            return {**out, "decision": PROMOTE, "percent": 100, "reason": why}
        return {**out, "decision": STEP, "percent": nxt, "reason": f"{why}: {percent}% -> {nxt}%"}
    half = (hi - lo) / 2
    need = more_needed(min(n_c, n_s), half, half - (-cfg.max_drop - lo))
    return {**out, "decision": HOLD, "needs": need,
            "reason": f"not sure yet: diff {test['diff']:+.2f}, CI [{lo:+.2f}, {hi:+.2f}] reaches below "
                      f"-{cfg.max_drop:g}; needs about {need} more rated answers per version"}


def error_test(cfg, traffic: dict | None) -> dict[str, Any] | None:
    """Canary's 5xx rate against stable's, once the canary answered ``min_requests``."""
    from ftctl.lib.stats import two_proportions

    if not traffic or not traffic["ok"]:
        return None
    s, c = traffic.get("stable") or {}, traffic.get("canary") or {}
    if c.get("requests", 0) < cfg.min_requests or not s.get("requests"):
        return None
    t = two_proportions(s["errors"], s["requests"], c["errors"], c["requests"], higher_is_better=False,
                        confidence=cfg.confidence)
    return {"stable_rate": round(t.a, 5), "canary_rate": round(t.b, 5), "diff": round(t.diff, 5),
            "ci": [round(t.ci[0], 5), round(t.ci[1], 5)], "p_value": round(t.p_value, 4), "verdict": t.verdict,
            "method": t.method, "flag": t.flag,
            "n": [s["requests"], c["requests"]]}


# --- the verb -----------------------------------------------------------------------------------


def check(ws, model: str | None = None, *, dry_run: bool = False, log: Log = print) -> dict[str, Any]:
    """Judge the live canary of ``model``; unless ``dry_run``, act and record the decision.

    Acting holds the run lock from the reading of the evidence to the recording of the decision
    (reentrant: the CLI and cycle hold it already); a dry run only reads."""
    if dry_run:
        return _check(ws, model, True, log)
    with ws.run_lock("canary check"):
        return _check(ws, model, False, log)


def _check(ws, model: str | None, dry_run: bool, log: Log) -> dict[str, Any]:
    model = model or ws.config.default_model
    cfg = ws.model(model).deploy.canary
    state = ws.read_lock().state(model)
    d = state.deployment
    if not d.canary:
        raise UsageError(f"model {model!r} has no live canary to check",
                         hint="start one with `ftctl deploy vX.Y --canary 5`")
    canary_v, percent = d.canary.version, d.canary.percent
    began = stage(state.history, canary_v)
    since = began.get("began") or began.get("time")
    log(f"judging canary {model}@{canary_v} ({percent}%) against stable {model}@{d.stable}"
        + (f" on feedback since {since}" if since else ""))
    live = ratings(ws, model, {"stable": d.stable, "canary": canary_v}, since, cfg.signal, log)
    dep = rollout.deployer(ws, model, log)
    before = rollout.status(ws, model, log, dep)
    ops = {**latency(before["apps"], cfg, began.get("counters")), "traffic": traffic(dep, since)}
    verdict = decide(cfg, live["scores"], ops, percent)
    evidence = {"since": since, "signal": live["signal"],
                "rated": {r: len(s) for r, s in live["scores"].items()}, "rows": live["rows"],
                "test": verdict["test"], "errors": verdict["errors"], "traffic": ops["traffic"],
                "latency": {k: v for k, v in ops.items() if k != "traffic"}, "served": live["served"],
                "read": live["read"], "rejected": live["rejected"]}
    out = {"model": model, "stable": d.stable, "canary": {"version": canary_v, "percent": percent},
           "decision": verdict["decision"], "percent": verdict["percent"], "reason": verdict["reason"],
           "needs": verdict["needs"], "evidence": evidence, "applied": False}
    log(f"decision: {verdict['decision']}: {verdict['reason']}")
    if live["served"]["unmatched"]:
        log(f"[yellow]{sum(live['served']['unmatched'].values())} feedback row(s) name a served model that "
            f"matches no version[/]: {', '.join(list(live['served']['unmatched'])[:5])}")
    if live["rejected"]:  # a source's reject reasons (docs/data-card.md): no rating to count
        log(f"[yellow]{sum(live['rejected'].values())} feedback row(s) could not be read[/], counted for neither "
            f"side: {', '.join(f'{n} {why}' for why, n in sorted(live['rejected'].items()))}")
    if live["served"]["none"]:  # never counted as stable: which version answered them is unknown
        log(f"[yellow]{live['served']['none']} feedback row(s) name no served model[/]: unattributed, counted "
            "for neither side (map the source's served_model column)")
    if dry_run:
        out["status"] = before
        return out

    def update(lock) -> None:
        st = lock.state(model)
        st.history.append(rollout.history_entry(st, ACTION, canary_v, verdict["decision"], detail=verdict["reason"],
                                                evidence=evidence))

    ws.record(f"canary check {model}@{canary_v}: {verdict['decision']}", update)
    if verdict["decision"] == PROMOTE:
        out["status"] = rollout.promote(ws, model, log=log)
    elif verdict["decision"] == STEP:
        out["status"] = rollout.deploy(ws, f"{model}@{canary_v}", canary=verdict["percent"], log=log)
    elif verdict["decision"] == ROLLBACK:
        out["status"] = rollout.rollback(ws, model, log=log)
    else:
        out["status"] = before
    out["applied"] = verdict["decision"] != HOLD
    return out
