"""`ftctl cycle`: the whole loop, safe to run from cron.

collect -> (enough new examples?) -> train -> eval gate -> export -> deploy (canary), all under
one run lock. Each step is the same core function its own verb calls, so the loop can never
drift from what a person does by hand. A second cron tick while a cycle runs exits with the
"locked" code; a tick with too little new feedback exits with "nothing to do" (3).

``cycle_all`` (``ftctl cycle --all``, what cron runs) takes every model of ``models:`` in turn
under the same lock, each with its own sources, filters, gate, deployer and ``cycle`` settings.
One model's failure is recorded (``.ftctl/log.jsonl``, one ``cycle`` event per model: `status`
and ``/metrics`` read it) and the next model runs; the exit code summarises them all
(:func:`summary_code`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from ftctl.errors import FAILURE, NOTHING_TO_DO, OK, FtctlError, GateFailed, NothingToDo
from ftctl.registry.workspace import Workspace, locked
from ftctl.lib.log import Log



def new_examples(ws: Workspace, model: str) -> int:
    """Training rows in the current snapshot beyond those the latest version trained on."""
    from ftctl.registry.versions import sorted_versions

    state = ws.read_lock().state(model)
    now_rows = (state.dataset or {}).get("rows", {}).get("train", 0)
    if not state.versions:
        return now_rows
    last = state.versions[sorted_versions(state.versions)[-1]]
    if last.dataset.get("md5") and last.dataset.get("md5") == (state.dataset or {}).get("md5"):
        return 0
    return max(now_rows - (last.dataset.get("rows") or {}).get("train", 0), 0)


@locked
def cycle(ws: Workspace, model: str | None = None, *, force: bool = False, max_steps: int | None = None,
          log: Log = print) -> dict[str, Any]:
    from ftctl.data.collect import collect
    from ftctl.eval.evaluate import evaluate
    from ftctl.eval.gating import gate
    from ftctl.train import train

    mc = ws.model(model)
    name, cc = mc.name, mc.cycle
    out: dict[str, Any] = {"model": name, "steps": {}}

    if ws.read_lock().state(name).deployment.canary:
        from ftctl.deploy.canary import check

        # a live canary is judged first; with cycle.deploy off the verdict is reported, not acted on
        log(f"[bold]0/5 canary check[/] {name}")
        out["steps"]["canary"] = check(ws, name, dry_run=not cc.deploy, log=log)
    drift_report = _drift(ws, name, log) if cc.drift.enabled else None
    out["drift"] = drift_report

    log(f"[bold]1/5 collect[/] {name}")
    collected = collect(ws, name, log=log, card_extra={"drift": drift_report} if drift_report else None)
    out["steps"]["collect"] = {k: collected[k] for k in ("read", "kept", "splits", "snapshot")}
    fresh = new_examples(ws, name)
    out["new_examples"] = fresh
    fired = triggers(ws, name, fresh, drift_report, log)
    out["triggers"] = fired
    if not force and not any(t["fired"] for t in fired.values()):
        quiet = NothingToDo("no trigger fired: " + "; ".join(t["evidence"] for t in fired.values()),
                            hint="--force trains anyway")
        quiet.result = out  # the canary verdict, drift report and triggers still reach `--json`
        raise quiet
    log("retraining: " + (", ".join(f"{n} fired" for n, t in fired.items() if t["fired"]) or "--force"))

    parent = parent_version(ws, name, cc.train_from, log)
    trained = None
    if parent:
        log(f"[bold]2/5 train[/] {name}@{parent} continued on its unseen rows ({fresh} new; cycle.train_from: "
            f"{cc.train_from})")
        try:
            trained = train(ws, name, from_=f"{name}@{parent}", new_only=True, max_steps=max_steps, log=log)
        except NothingToDo as e:  # a retrain asked for by the ratings alone: nothing new to continue on
            log(f"{e.message}: training from the base on everything instead")
    if trained is None:
        log(f"[bold]2/5 train[/] on {collected['splits']['train']} examples ({fresh} new)")
        trained = train(ws, name, max_steps=max_steps, log=log)
    version = trained["version"]
    out["version"] = version
    out["steps"]["train"] = trained

    log(f"[bold]3/5 eval[/] {name}@{version}")
    if cc.gate and (len(ws.read_lock().state(name).versions) > 1 or ws.read_lock().state(name).deployment.stable):
        try:
            gated = gate(ws, f"{name}@{version}", log=log)
        except GateFailed as e:
            out["steps"]["eval"] = {"gate": "failed", "reason": e.message}
            e.hint = f"{name}@{version} is recorded but was not exported or deployed; {e.hint or ''}".strip()
            e.result = out
            raise
        out["steps"]["eval"] = {"gate": "passed", "against": gated["a"], "report": gated["report"]}
    else:  # the first version (nothing to beat but the base), or cycle.gate off: numbers recorded, not judged
        out["steps"]["eval"] = {"metrics": evaluate(ws, f"{name}@{version}", log=log)["metrics"]}

    if cc.export:
        from ftctl.export import export

        log(f"[bold]4/5 export[/] {name}@{version}")
        out["steps"]["export"] = export(ws, f"{name}@{version}", log=log)
    live = ws.read_lock().state(name).deployment.canary
    if cc.deploy and live:
        log(f"[bold]5/5 deploy[/] skipped: {name}@{live.version} "
            f"is still on trial as the canary")
        out["steps"]["deploy"] = {"skipped": "a canary is live"}
    elif cc.deploy:
        from ftctl.deploy.rollout import deploy

        # the gate already ran above, on the same rule `ftctl deploy` applies (ftctl.verbs)
        if ws.read_lock().state(name).deployment.stable:
            log(f"[bold]5/5 deploy[/] {name}@{version} as a {cc.canary_percent}% canary")
            out["steps"]["deploy"] = deploy(ws, f"{name}@{version}", canary=cc.canary_percent, log=log)
        else:  # the first version: there is nothing to judge a canary against
            log(f"[bold]5/5 deploy[/] {name}@{version} as stable (nothing is deployed yet)")
            out["steps"]["deploy"] = deploy(ws, f"{name}@{version}", log=log)
    return out


def triggers(ws: Workspace, model: str, fresh: int, drift_report: dict | None, log: Log = print) -> dict[str, Any]:
    """Every ``cycle.triggers`` signal: ``{name: {"fired", "value", "threshold", "evidence"}}``,
    each logged with its evidence whether it fires or not (a signal set to null is absent)."""
    cc = ws.model(model).cycle
    t = cc.triggers
    out: dict[str, dict[str, Any]] = {}
    need = t.new_rows or cc.min_new_examples
    key = "cycle.triggers.new_rows" if t.new_rows else "cycle.min_new_examples"
    out["new_rows"] = {"fired": fresh >= need, "value": fresh, "threshold": need,
                       "evidence": f"{fresh} new training example(s) since the latest version "
                                   f"({'>=' if fresh >= need else '<'} {need}, {key})"}
    if t.negatives:
        n, since = negatives(ws, model, t.negative_rating, log)
        out["negatives"] = {"fired": n >= t.negatives, "value": n, "threshold": t.negatives, "since": since,
                            "evidence": f"{n} negative row(s) (thumbs down, rating <= {t.negative_rating:g} or "
                                        f"reward < 0) since {since or 'the start'} "
                                        f"({'>=' if n >= t.negatives else '<'} {t.negatives})"}
    if t.drift:
        nov = (drift_report or {}).get("novelty") or {}
        if nov.get("new") is None:
            out["drift"] = {"fired": False, "value": None, "threshold": t.drift,
                            "evidence": "content drift not measured (no version, no new prompts, or drift off)"}
        else:
            score = round(nov["new"] - (nov.get("baseline") or 0), 4)
            out["drift"] = {"fired": score > t.drift, "value": score, "threshold": t.drift,
                            "evidence": f"content drift {score:+.3f} (new prompts' unseen {nov['ngram']}-grams "
                                        f"{nov['new']:.3f} vs the snapshot's own {nov.get('baseline') or 0:.3f}; "
                                        f"{'>' if score > t.drift else '<='} {t.drift})"}
    drop_on = cc.drift.retrain_on_drop if t.rating_drop is None else t.rating_drop
    if drop_on:
        stable = ws.read_lock().state(model).deployment.stable
        row = ((drift_report or {}).get("ratings") or {}).get(stable or "", {})
        dropped = bool(drift_report and drift_report.get("stable_drop"))
        if row.get("verdict"):
            evidence = (f"stable {model}@{stable} rated {row['before'].get('mean')} -> {row['after'].get('mean')} "
                        f"(diff {row['diff']}, CI {row['ci']}, p {row['p_value']}): {row['verdict']}")
        else:
            evidence = (f"no rating test: {'nothing stable' if not stable else 'too few ratings'} "
                        f"(drift.min_rated {cc.drift.min_rated} before and after)")
        out["rating_drop"] = {"fired": dropped, "value": row.get("diff"), "threshold": "significantly worse",
                              "evidence": evidence}
    for name, trig in out.items():
        log(f"trigger {name}: {'[bold]fired[/]' if trig['fired'] else 'not fired'}: {trig['evidence']}")
    return out


def negatives(ws: Workspace, model: str, low_rating: float, log: Log = print) -> tuple[int, str | None]:
    """(negative feedback rows since the latest version's snapshot, that moment): thumbs down,
    a rating at or below ``low_rating``, or a reward below 0; read live from the sources."""
    from ftctl import feedback
    from ftctl.registry import seen
    from ftctl.registry.versions import sorted_versions

    state = ws.read_lock().state(model)
    since = seen.snapshot_time(state.versions[sorted_versions(state.versions)[-1]]) if state.versions else None
    count = 0

    def visit(ex) -> None:
        nonlocal count
        r = feedback.score(ex, "reward")
        if ex.feedback_type == "thumbs_down" or (ex.rating is not None and ex.rating <= low_rating) \
                or (r is not None and r < 0):
            count += 1

    feedback.scan(ws, model, since, visit, lambda *_: None)
    return count, since


def parent_version(ws: Workspace, model: str, train_from: str, log: Log = print) -> str | None:
    """The version a cycle continues (``cycle.train_from``), or None for the base: also when the
    ref names nothing yet, or the version's lineage was reached by `ftctl forget` (continuing it
    would keep what was erased)."""
    from ftctl.registry.versions import sorted_versions

    if train_from == "base":
        return None
    state = ws.read_lock().state(model)
    version = state.deployment.stable if train_from == "stable" else (
        sorted_versions(state.versions)[-1] if state.versions else None)
    if not version or version not in state.versions:
        log(f"cycle.train_from {train_from}: no such version of {model} yet; training from the base")
        return None
    from ftctl.registry.lockfile import forgotten_marks

    erased = {v for e in state.history if e.get("action") == "forget" for v in e.get("versions") or []}
    v: str | None = version
    while v:
        if v in erased or forgotten_marks(state.versions.get(v)):
            log(f"[yellow]{model}@{version} descends from {model}@{v}, which held forgotten data: training "
                f"from the base[/]")
            return None
        v = state.versions[v].parent if v in state.versions else None
    return version


def cycle_model(ws: Workspace, model: str, *, force: bool = False, max_steps: int | None = None,
                log: Log = print) -> dict[str, Any]:
    """One model's cycle, its outcome recorded as a ``cycle`` event of that model whatever
    happens (`status` and ``/metrics`` report it). Raises what :func:`cycle` raises."""
    outcome: dict[str, Any] = {"command": "cycle", "model": model, "ok": False, "exit_code": FAILURE}
    try:
        result = cycle(ws, model, force=force, max_steps=max_steps, log=log)
        outcome.update(ok=True, exit_code=OK, version=result.get("version"))
        return result
    except FtctlError as e:
        outcome.update(ok=e.exit_code == NOTHING_TO_DO, exit_code=e.exit_code, error=e.message,
                       version=(e.result or {}).get("version"))
        raise
    except Exception as e:
        outcome["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        import json

        from ftctl.lib.atomic import write_text
        from ftctl.lib.times import now

        ws.log_event(outcome)
        write_text(_outcome_path(ws, model), json.dumps({"time": now(), **outcome}, default=str))


@locked
def cycle_all(ws: Workspace, *, force: bool = False, max_steps: int | None = None,
              log: Log = print) -> dict[str, Any]:
    """Every model of ``models:`` in turn; each one's failure is recorded and the others still run.

    Returns ``{"models": {name: outcome}, "exit_code": ...}``; raises an :class:`FtctlError` with
    that summary code (and the whole result attached) when it is not 0."""
    outcomes: dict[str, dict[str, Any]] = {}
    for name in ws.config.model_names():
        log(f"[bold]== cycle {name}[/]")
        try:
            result = cycle_model(ws, name, force=force, max_steps=max_steps, log=log)
            outcomes[name] = {"exit_code": OK, "result": result}
        except FtctlError as e:
            outcomes[name] = {"exit_code": e.exit_code, "error": e.message, "hint": e.hint, "result": e.result}
            log(f"{name}: {'nothing to do' if e.exit_code == NOTHING_TO_DO else '[red]failed[/]'}: {e.message}")
        except Exception as e:  # noqa: BLE001 - one model's bug or broken library must not stop the others
            outcomes[name] = {"exit_code": FAILURE, "error": f"{type(e).__name__}: {e}", "hint": "rerun with --debug "
                              f"and `--model {name}` for the traceback", "result": None}
            log(f"{name}: [red]failed[/]: {type(e).__name__}: {e}")
    code = summary_code([o["exit_code"] for o in outcomes.values()])
    out = {"models": outcomes, "exit_code": code}
    if code == OK:
        return out
    failed = {n: o for n, o in outcomes.items() if o["exit_code"] not in (OK, NOTHING_TO_DO)}
    if failed:
        err = FtctlError(f"cycle failed for {len(failed)} of {len(outcomes)} model(s): "
                         + "; ".join(f"{n}: {o['error']}" for n, o in failed.items()),
                         hint="the other models ran; `ftctl status --all` shows each one's last cycle",
                         exit_code=code)
    else:
        err = NothingToDo(f"nothing to do for any of the {len(outcomes)} model(s)",
                          hint="--force trains anyway")
    err.result = out
    raise err


def summary_code(codes: list[int]) -> int:
    """One exit code for several models: 0 when none failed and at least one trained; 3 when all
    had nothing to do; a failure's own code when the failures agree (5: gates failed), else 1."""
    failures = {c for c in codes if c not in (OK, NOTHING_TO_DO)}
    if failures:
        return failures.pop() if len(failures) == 1 else FAILURE
    return OK if OK in codes else NOTHING_TO_DO


def last_outcomes(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Each model's last cycle outcome (``.ftctl/cycle/<model>.json``), for status and /metrics."""
    from ftctl.lib.atomic import read_json

    out = {}
    for name in ws.config.model_names():
        outcome = read_json(_outcome_path(ws, name))
        if outcome:
            out[name] = outcome
    return out


def _outcome_path(ws: Workspace, model: str) -> Path:
    return ws.state_dir / "cycle" / f"{model}.json"


def _drift(ws: Workspace, model: str, log: Log) -> dict[str, Any] | None:
    """The drift report, or None when there is nothing to compare yet (no version, no snapshot)."""
    from ftctl.data.drift import drift
    from ftctl.errors import UsageError

    try:
        return drift(ws, model, log=log)
    except UsageError as e:
        log(f"drift: skipped ({e.message})")
        return None


def cron_line(ws: Workspace) -> tuple[str, str]:
    """(schedule, command) for a crontab: the venv's own ftctl, this workspace, every model
    (``cycle --all``), a log file."""
    from croniter import croniter

    from ftctl.errors import ConfigError

    schedule = ws.config.cycle.schedule
    if not croniter.is_valid(schedule):
        raise ConfigError(f"cycle.schedule: {schedule!r} is not a cron expression", hint='e.g. "0 3 * * *"')
    exe = Path(sys.executable).with_name("ftctl")
    log = ws.state_dir / "cycle.log"
    # cron runs the line with /bin/sh: each path quoted (a space or ; would split it), and % is
    # cron's own newline, escaped even inside quotes (crontab(5))
    def q(path: Path) -> str:
        return shlex.quote(str(path)).replace("%", "\\%")

    return schedule, f"{q(exe)} -C {q(ws.root)} --wait 0 cycle --all >> {q(log)} 2>&1"


def install_cron(ws: Workspace, tabfile: Path | None = None) -> dict[str, Any]:
    """Add (or replace) this workspace's entry in the user's crontab (python-crontab)."""
    from crontab import CronTab

    schedule, command = cron_line(ws)
    tab = CronTab(tabfile=str(tabfile)) if tabfile else CronTab(user=True)
    marker = f"ftctl cycle {ws.root}"
    tab.remove_all(comment=marker)
    job = tab.new(command=command, comment=marker)
    job.setall(schedule)
    tab.write()
    return {"schedule": schedule, "command": command, "crontab": str(tabfile) if tabfile else "user"}
