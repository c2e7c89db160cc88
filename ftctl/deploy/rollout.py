"""`ftctl deploy / promote / rollback / status`: decide, call the deployer, record.

The deployer plugin (``deploy.deployer``, pm2 by default) offers a few primitives
(:class:`ftctl.kinds.Deployer`: serve an artifact in a slot, stop a slot, identity and health
of the slots, move traffic, snapshot/restore its configuration). Everything else is here and
the same for every deployer: which file to serve (the version's exported GGUF), canary,
promote, rollback, the hand-off without downtime, recovery of an interrupted command,
and the record of every change in models.lock (``deployment`` and ``history``) through
``ws.record``. Each verb returns the status shape of the scripting contract. The eval gate is
the eval stage's: `ftctl deploy` hands it in as ``deploy(check=...)`` (ftctl.verbs).

A command killed half-way leaves a pending note (with the deployer's snapshot); the next
deploy/promote/rollback puts the serving stack back to the recorded state first, and
``ftctl rollback`` does only that.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl.deploy.metrics import counters
from ftctl.errors import NothingToDo, RolledBack, UsageError
from ftctl.kinds import AppStatus, Artifact, Deployer, ExportQuery
from ftctl.lib.atomic import write_text
from ftctl.lib.digest import file_sha256
from ftctl.lib.log import Log, current_user
from ftctl.lib.times import now
from ftctl.registry.lockfile import Lock, ModelState, forgotten_marks
from ftctl.registry.versions import resolve, split_ref
from ftctl.registry.workspace import locked


def deployer(ws, model: str, log: Log) -> Deployer:
    from ftctl import plugins

    cfg = ws.model(model).deploy
    raw = cfg.plugin_config(cfg.deployer)
    required = plugins.required_settings("deployer", cfg.deployer)
    if not raw and required:  # nothing set up yet (the demo workspace): say so, not "Field required"
        raise UsageError(f"no deployment is configured for {model!r}: deploy.{cfg.deployer} is empty",
                         hint=f"set deploy.{cfg.deployer}: {', '.join(required)} in ftctl.yaml (docs/deploy.md)")
    dep = plugins.build("deployer", cfg.deployer, raw, ws.context(model, log),
                        key=f"models.{model}.deploy.{cfg.deployer}")
    dep.exported = exported(ws, model, dep.serves())
    return dep


def exported(ws, model: str, want: ExportQuery) -> tuple[Artifact, ...]:
    """Every version's exported file that ``want`` names and the work tree holds (Deployer.exported)."""
    state = ws.read_lock().models.get(model)
    out = []
    for version, entry in (state.versions.items() if state else ()):
        found = entry.find_export(want.kind, want.quant)
        if found and (ws.root / found.path).is_file():
            out.append(Artifact(model=model, version=version, path=(ws.root / found.path).resolve(), rel=found.path,
                                sha256=found.sha256 or "", kind=want.kind, quant=found.quant))
    return tuple(out)


def _model_and_version(ws, ref: str) -> tuple[str, str]:
    model, ver = split_ref(ref, ws.config.default_model)
    ws.model(model)  # unknown model: a config error naming the known ones
    version = resolve(ws.read_lock(), model, ver)
    if version == "base":
        raise UsageError("the base model has no exported GGUF of its own", hint="deploy a version, e.g. v1.0")
    return model, version


def refuse_forgotten(ws, model: str, version: str, allow: bool, action: str, log: Log) -> None:
    """A version trained on data `ftctl forget` erased since is not served again by accident."""
    marks = forgotten_marks(ws.read_lock().state(model).versions.get(version))
    if not marks:
        return
    rows = sum(int(m.get("rows") or 0) for m in marks)
    what = f"{model}@{version} was trained on forgotten data ({rows} row(s), forgotten {marks[-1].get('time')})"
    if not allow:
        raise UsageError(f"refusing to {action} {what}",
                         hint="deploy a version trained since (`ftctl forget --retrain`, or `ftctl collect --since all` "
                              "then `ftctl train`), or pass --allow-forgotten")
    log(f"[yellow]{what}: --allow-forgotten given[/]")


def artifact(ws, model: str, version: str, dep: Deployer) -> Artifact:
    """The exported file ``dep`` serves for ``version``, checked against its recorded sha256."""
    want = dep.serves()
    entry = ws.read_lock().state(model).versions[version]
    found = entry.find_export(want.kind, want.quant)
    if found is None:
        raise UsageError(f"{model}@{version} has no exported {want.kind}" + (f" ({want.quant})" if want.quant else ""),
                         hint=f"run `ftctl export {model}@{version}` first")
    path = (ws.root / found.path).resolve()
    if not path.is_file():
        raise UsageError(f"the GGUF of {model}@{version} does not exist: {found.path}",
                         hint=f"restore it with `ftctl checkout {model}@{version}` (or `dvc pull`)")
    digest = file_sha256(path)
    if found.sha256 and found.sha256 != digest:
        raise UsageError(f"{found.path} does not match the sha256 recorded for {model}@{version}",
                         hint="the file changed since export; restore it with `ftctl checkout`")
    return Artifact(model=model, version=version, path=path, rel=found.path, sha256=digest, kind=want.kind,
                    quant=found.quant)


def _served_files(ws, state: ModelState) -> dict[str, tuple[str, str | None]]:
    """Absolute exported path -> (version, sha256), for telling what an app serves."""
    out = {}
    for v, entry in state.versions.items():
        for e in entry.exports:
            out[str((ws.root / e.path).resolve())] = (v, e.sha256)
    return out


# --- status -------------------------------------------------------------------------------------


def status(ws, model: str | None = None, log: Log = print, dep: Deployer | None = None) -> dict[str, Any]:
    model = model or ws.config.default_model
    dep = dep or deployer(ws, model, log)
    state = ws.read_lock().models.get(model) or ModelState()
    files = _served_files(ws, state)
    apps = []
    for slot in dep.slots():
        version, digest = files.get(str(slot.resolved) if slot.resolved else "", (None, None))
        health = dep.health(slot)
        apps.append(AppStatus(name=slot.name, role=slot.slot, version=version, model_path=slot.model_path,
                              sha256=digest, healthy=health.healthy, served_id=health.served_id,
                              port=slot.port).to_dict())
    d = state.deployment
    return {"model": model, "stable": d.stable, "canary": d.canary.model_dump() if d.canary else None,
            "apps": apps, "history": list(state.history),
            "interrupted": _pending_path(ws, model).exists()}


# --- recording ----------------------------------------------------------------------------------


def _record(ws, model: str, action: str, version: str | None, *, stable: str | None = ...,
            canary: dict | None = ..., result: str = "ok", detail: str | None = None, apps=None,
            extra: dict | None = None) -> None:
    def update(lock: Lock) -> None:
        st = lock.state(model)
        if stable is not ...:
            st.deployment.stable = stable
        if canary is not ...:
            st.deployment.canary = canary
        if apps is not None:
            st.deployment.apps = apps
        st.history.append(history_entry(st, action, version, result, **({"detail": detail} if detail else {}),
                                        **(extra or {})))

    what = f"{action} {model}@{version}" if version else f"{action} {model}"
    ws.record(f"deploy: {what}" + ("" if result == "ok" else f" ({result})"), update)


def history_entry(st: ModelState, action: str, version: str | None, result: str, **extra: Any) -> dict[str, Any]:
    """One line of a model's deployment history (models.lock): when, who, what, the outcome, and
    where stable and canary stand after it. Every change and every canary decision writes one."""
    return {"time": now(), "user": current_user(), "action": action, "version": version,
            "stable": st.deployment.stable,
            "canary": st.deployment.canary.model_dump() if st.deployment.canary else None,
            "result": result, **extra}


def _apps_entry(dep: Deployer, arts: dict[str, Artifact | None]) -> list[dict]:
    """What models.lock keeps per slot: name, role, version, file, sha256 (after the change)."""
    names = {s.slot: s.name for s in dep.slots()}
    return [{"name": names.get(role, role), "role": role, "version": art.version, "model_path": art.rel,
             "sha256": art.sha256} for role, art in arts.items() if art]


# --- interrupted commands -----------------------------------------------------------------------


def _pending_path(ws, model: str) -> Path:
    return ws.root / ".ftctl" / "deploy" / f"{model}.pending.json"


@contextlib.contextmanager
def _pending(ws, model: str, dep: Deployer, action: str, version: str) -> Iterator[None]:
    """Note what is about to change; kept only if the command dies before it finishes."""
    path = _pending_path(ws, model)
    snapshot = dep.snapshot()
    write_text(path, json.dumps({"action": action, "version": version, "snapshot": snapshot}))
    try:
        yield
    except RolledBack:
        path.unlink(missing_ok=True)  # the deployer already put things back
        raise
    except Exception:
        # a tool failed half-way: put the recorded state back now; if that fails too, the note
        # stays and the next command (or `ftctl rollback`) retries it
        with contextlib.suppress(Exception):
            _restore(dep, snapshot, _canary_percent(ws, model))
            path.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)


def _canary_percent(ws, model: str) -> int:
    canary = ws.read_lock().state(model).deployment.canary
    return canary.percent if canary else 0


def _restore(dep: Deployer, snapshot: str, canary_percent: int) -> None:
    """The deployer's configuration as recorded, traffic as recorded, no canary unless recorded."""
    dep.restore(snapshot)
    canary_up = any(s.slot == "canary" for s in dep.slots())
    dep.route(canary_percent if canary_up else 0)
    if not canary_percent:
        dep.stop("canary")


def _recover(ws, model: str, dep: Deployer, log: Log) -> bool:
    path = _pending_path(ws, model)
    if not path.exists():
        return False
    note = json.loads(path.read_text())
    log(f"an interrupted `{note['action']} {note['version']}` left {model} half-changed: restoring the recorded state")
    _restore(dep, note["snapshot"], _canary_percent(ws, model))
    path.unlink()
    _record(ws, model, "recover", note["version"], detail=f"undid interrupted {note['action']}")
    return True


# --- verbs --------------------------------------------------------------------------------------


def _artifact_of(ws, model: str, version: str | None, dep: Deployer) -> Artifact | None:
    return artifact(ws, model, version, dep) if version else None


@locked
def deploy(ws, ref: str, *, canary: int | None = None, dry_run: bool = False,
           check: Callable[[str, str], Any] | None = None, allow_forgotten: bool = False,
           log: Log = print) -> dict[str, Any]:
    """Serve version ``ref`` from the stable app, or from a canary taking ``canary`` percent.

    ``check(model, label)`` runs once the deployer is ready and an interrupted command is undone,
    before anything changes; raising stops the deploy. `ftctl deploy` passes the eval gate there
    (ftctl.verbs): this stage does not import the eval stage."""
    if canary is not None and not 1 <= canary <= 100:
        raise UsageError(f"--canary {canary}: a percentage from 1 to 100")
    model, version = _model_and_version(ws, ref)
    refuse_forgotten(ws, model, version, allow_forgotten, "deploy", log)
    dep = deployer(ws, model, log)
    art = artifact(ws, model, version, dep)
    label = art.label
    if dry_run:
        plan = dep.preview("canary" if canary else "stable", art)
        return {**status(ws, model, log, dep), "dry_run": {"diff": plan.diff, "commands": plan.commands,
                                                           "notes": plan.notes}}
    dep.preflight()
    _recover(ws, model, dep, log)
    d = ws.read_lock().state(model).deployment
    dep.check("canary" if canary is not None and not (d.canary and d.canary.version == version) else "stable", art)
    if check is not None:
        check(model, label)
    stable = _artifact_of(ws, model, d.stable, dep) if d.stable else None
    if canary is not None:
        if d.canary and d.canary.version != version:
            raise UsageError(f"{model}@{d.canary.version} is already the canary",
                             hint="`ftctl promote` or `ftctl rollback` it first")
        if not d.canary:
            if version == d.stable:
                raise NothingToDo(f"{label} is already the stable version")
            log(f"starting a canary with {label}")
            with _pending(ws, model, dep, "canary", version):
                dep.serve("canary", art)
                dep.route(canary)
        else:
            with _pending(ws, model, dep, "canary", version):
                dep.route(canary)
        log(f"{canary}% of traffic goes to {label}")
        apps = _apps_entry(dep, {"stable": stable, "canary": art})
        new = {"version": version, "percent": canary, "app": apps[-1]["name"]}
        # the stage begins now, at this share: `canary check` judges the feedback from this moment
        # (to the microsecond: history times are whole seconds) and the latency from where the
        # servers' counters stand, not their whole lives
        began = datetime.now(timezone.utc).isoformat()
        start = counters([{"role": s.slot, "port": s.port} for s in dep.slots()], ws.model(model).deploy.canary)
        _record(ws, model, "canary", version, canary=new, apps=apps, extra={"began": began, "counters": start})
        return status(ws, model, log, dep)
    if d.canary:
        raise UsageError(f"{model}@{d.canary.version} is running as a canary",
                         hint="`ftctl promote` or `ftctl rollback` it before deploying another version")
    if version == d.stable and any(s.slot == "stable" and s.resolved == art.path for s in dep.slots()):
        raise NothingToDo(f"{label} is already deployed", hint="`ftctl status` shows what is serving")
    _swap_stable(ws, model, dep, "deploy", art)
    return status(ws, model, log, dep)


def _canary_up(dep: Deployer) -> bool:
    return any(s.slot == "canary" for s in dep.slots())


def _serve_stable(dep: Deployer, art: Artifact, *, canary_ready: bool) -> None:
    """The stable slot serves ``art``. With a router, a hand-off without downtime: the canary
    slot serves ``art`` and takes all traffic while stable restarts, then gives it back."""
    if not dep.splits_traffic():
        dep.serve("stable", art)
        if _canary_up(dep):  # a promoted canary is still up: stable serves its file now
            dep.stop("canary")
        return
    if not canary_ready:
        dep.serve("canary", art)
    dep.route(100)
    try:
        dep.serve("stable", art)
    finally:
        dep.route(0)  # stable (new, or the old one put back) takes all traffic again
        dep.stop("canary")


def _swap_stable(ws, model: str, dep: Deployer, action: str, art: Artifact, *, canary_ready: bool = False) -> None:
    dep.ctx.log(f"{action}: stable -> {art.label}")
    try:
        with _pending(ws, model, dep, action, art.version):
            _serve_stable(dep, art, canary_ready=canary_ready)
    except RolledBack as e:
        _record(ws, model, action, art.version, result="rolled back", detail=e.message)
        raise
    _record(ws, model, action, art.version, stable=art.version, canary=None, apps=_apps_entry(dep, {"stable": art}))


@locked
def promote(ws, model: str | None = None, allow_forgotten: bool = False, log: Log = print) -> dict[str, Any]:
    """The stable app takes the canary's model; the canary goes away."""
    model = model or ws.config.default_model
    dep = deployer(ws, model, log)
    dep.preflight()
    _recover(ws, model, dep, log)
    d = ws.read_lock().state(model).deployment
    if not d.canary:
        raise UsageError(f"model {model!r} has no canary to promote",
                         hint="start one with `ftctl deploy vX.Y --canary 20`")
    refuse_forgotten(ws, model, d.canary.version, allow_forgotten, "promote", log)
    art = _artifact_of(ws, model, d.canary.version, dep)
    dep.check("stable", art)
    _swap_stable(ws, model, dep, "promote", art, canary_ready=_canary_up(dep))
    return status(ws, model, log, dep)


@locked
def rollback(ws, model: str | None = None, to: str | None = None, allow_forgotten: bool = False,
             log: Log = print) -> dict[str, Any]:
    """Undo an interrupted command; else drop the canary; else go back to the previous stable."""
    model = model or ws.config.default_model
    if to:  # refused before the deployer is touched
        refuse_forgotten(ws, model, resolve(ws.read_lock(), model, split_ref(to, model)[1]), allow_forgotten,
                         "roll back to", log)
    dep = deployer(ws, model, log)
    dep.preflight()
    if _recover(ws, model, dep, log):
        return status(ws, model, log, dep)
    state = ws.read_lock().state(model)
    d = state.deployment
    if d.canary and not to:
        log(f"all traffic back to {model}@{d.stable}; removing the canary {model}@{d.canary.version}")
        with _pending(ws, model, dep, "rollback", d.canary.version):
            dep.route(0)
            dep.stop("canary")
        stable = _artifact_of(ws, model, d.stable, dep) if d.stable else None
        _record(ws, model, "rollback", d.canary.version, canary=None, apps=_apps_entry(dep, {"stable": stable}))
        return status(ws, model, log, dep)
    if to:
        target = resolve(ws.read_lock(), model, split_ref(to, model)[1])
    else:
        target = _previous_stable(state)
        if not target:
            raise UsageError(f"model {model!r} has no previous version to roll back to",
                             hint="see `ftctl status`; deploy one with `ftctl deploy vX.Y`")
    refuse_forgotten(ws, model, target, allow_forgotten, "roll back to", log)
    art = _artifact_of(ws, model, target, dep)
    dep.check("stable", art)
    if d.canary:
        dep.route(0)
        dep.stop("canary")
    _swap_stable(ws, model, dep, "rollback", art)
    return status(ws, model, log, dep)


def _previous_stable(state: ModelState) -> str | None:
    """The stable version before the current one (from the history of successful changes)."""
    current = state.deployment.stable
    for h in reversed(state.history):
        if h.get("result") == "ok" and h.get("stable") and h["stable"] != current:
            return h["stable"]
    return None
