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
    retrain = bool(drift_report and drift_report["retrain"])
    if fresh < cc.min_new_examples and not force and not retrain:
        quiet = NothingToDo(f"{fresh} new training example(s) since the latest version; the cycle trains "
                            f"at {cc.min_new_examples} (cycle.min_new_examples)", hint="--force trains anyway")
        quiet.result = out  # the canary verdict and drift report still reach `--json`
        raise quiet
    if retrain and fresh < cc.min_new_examples:
        log(f"users rate the stable version significantly lower: retraining on {fresh} new example(s)")

    log(f"[bold]2/5 train[/] on {collected['splits']['train']} examples ({fresh} new)")
    trained = train(ws, name, max_steps=max_steps, log=log)
    version = trained["version"]
    out["version"] = version
    out["steps"]["train"] = trained

    log(f"[bold]3/5 eval[/] {name}@{version}")
    if len(ws.read_lock().state(name).versions) > 1 or ws.read_lock().state(name).deployment.stable:
        try:
            gated = gate(ws, f"{name}@{version}", log=log)
        except GateFailed as e:
            out["steps"]["eval"] = {"gate": "failed", "reason": e.message}
            e.hint = f"{name}@{version} is recorded but was not exported or deployed; {e.hint or ''}".strip()
            e.result = out
            raise
        out["steps"]["eval"] = {"gate": "passed", "against": gated["a"], "report": gated["report"]}
    else:  # the first version has nothing to beat but the base; its numbers still get recorded
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

        log(f"[bold]5/5 deploy[/] {name}@{version} as a {cc.canary_percent}% canary")
        # the gate already ran above, on the same rule `ftctl deploy` applies (ftctl.verbs)
        out["steps"]["deploy"] = deploy(ws, f"{name}@{version}", canary=cc.canary_percent, log=log)
    return out


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
