"""`ftctl deploy / promote / rollback / status`: decide, call the deployer, record.

The deployer plugin (``deploy.deployer``, pm2 by default) offers a few primitives
(:class:`ftctl.kinds.Deployer`: serve an artifact in a slot, stop a slot, identity and health
of the slots, move traffic, snapshot/restore its configuration). Everything else is here and
the same for every deployer: which file to serve (the version's exported GGUF, the recorded
``baseline``, the ``base`` GGUF), canary, promote, rollback, the hand-off without downtime,
recovery of an interrupted command, and the record of every change in models.lock
(``deployment``, ``baseline`` and ``history``) through ``ws.record``. Each verb returns the
status shape of the scripting contract. The eval gate is the eval stage's: `ftctl deploy` hands
it in as ``deploy(check=...)`` (ftctl.verbs).

Each change is checked (the deployer's ``check`` and ``snapshot``) before a pending note is
written, and the note goes only after models.lock recorded the outcome and the deployer
persisted it (``pm2 save``): see ``_change``. A command killed half-way leaves the note; the
next deploy/promote/rollback puts the serving stack back to the recorded state first (or, when
the outcome was recorded, only finishes), and ``ftctl rollback`` does only that.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl.deploy.metrics import counters
from ftctl.errors import ConfigError, NothingToDo, RolledBack, UsageError
from ftctl.kinds import AppStatus, Artifact, Deployer, ExportQuery
from ftctl.lib.atomic import write_text
from ftctl.lib.digest import file_sha256
from ftctl.lib.log import Log, current_user
from ftctl.lib.times import now
from ftctl.registry.lockfile import Lock, ModelState, forgotten_marks
from ftctl.registry.versions import BASE, BASELINE, resolve, split_ref
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
    return model, resolve(ws.read_lock(), model, ver)


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
    if version == BASELINE:
        return _baseline_artifact(ws, model, dep)
    if version == BASE:
        return _base_artifact(ws, model, dep)
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
    check_gguf(path, f"{model}@{version}", found.get("bytes"), hint="restore it with `ftctl checkout`")
    digest = file_sha256(path)
    if found.sha256 and found.sha256 != digest:
        raise UsageError(f"{found.path} does not match the sha256 recorded for {model}@{version}",
                         hint="the file changed since export; restore it with `ftctl checkout`")
    return Artifact(model=model, version=version, path=path, rel=found.path, sha256=digest, kind=want.kind,
                    quant=found.quant)


def _baseline_artifact(ws, model: str, dep: Deployer) -> Artifact:
    """What the app served before ftctl, as recorded: the same file (size, sha256), still there."""
    b = ws.read_lock().state(model).baseline
    label = f"{model}@{BASELINE}"
    want = dep.serves()
    if want.kind != "gguf":
        raise UsageError(f"{label} is a model file ({b.path}); the {dep.name} deployer serves {want.kind} files",
                         hint="deploy a version instead")
    path = Path(b.path)
    if not path.is_file():
        raise UsageError(f"the file of {label} no longer exists: {b.path}",
                         hint="put the file back at that path (ftctl keeps no copy of it), or deploy a version")
    check_gguf(path, label, b.bytes, hint="put back the file the app served before ftctl")
    digest = file_sha256(path)
    if b.sha256 and b.sha256 != digest:
        raise UsageError(f"{b.path} is not the file recorded as {label} (its sha256 changed)",
                         hint="put back the file the app served before ftctl, or deploy a version")
    return Artifact(model=model, version=BASELINE, path=path, rel=b.path, sha256=digest, kind="gguf")


def base_gguf(ws, model: str) -> Path | None:
    """The untuned base as a GGUF file, when ``base:`` is one (a catalogue GGUF or a .gguf path)."""
    from ftctl.lib.basemodel import locate

    with contextlib.suppress(Exception):  # a missing catalogue package: no file
        path = locate(ws.model(model).base, ws.root)
        if path.suffix.lower() == ".gguf" and path.is_file():
            return path.resolve()
    return None


def _base_artifact(ws, model: str, dep: Deployer) -> Artifact:
    label = f"{model}@{BASE}"
    if dep.serves().kind != "gguf":
        raise UsageError(f"{label} is a whole model; the {dep.name} deployer serves {dep.serves().kind} files",
                         hint="deploy a version instead")
    path = base_gguf(ws, model)
    if path is None:
        raise UsageError(f"{label} has no GGUF file: base {ws.model(model).base!r} is not a .gguf",
                         hint="set `base:` to the GGUF the versions were trained from, or convert the base "
                              "with llama.cpp's convert_hf_to_gguf.py and point `base:` at the result")
    check_gguf(path, label, None, hint="point `base:` at a whole GGUF file")
    return Artifact(model=model, version=BASE, path=path, rel=str(path), sha256=file_sha256(path), kind="gguf")


def record_baseline(ws, model: str, dep: Deployer, log: Log) -> None:
    """Before ftctl's first change of a model's app: what it serves now, as ``<model>@baseline``
    (the file, its sha256 when readable, the app's whole argument list, the id it answers with),
    so rollback and canaries can return to what the team ran before."""
    state = ws.read_lock().state(model)
    if state.baseline or state.deployment.stable:
        return
    slot = next((s for s in dep.slots() if s.slot == "stable"), None)
    if slot is None or slot.resolved is None or str(slot.resolved) in _served_files(ws, state, versions_only=True):
        return  # nothing served, or already one of ftctl's versions
    digest = size = None
    with contextlib.suppress(OSError):
        size = slot.resolved.stat().st_size
        digest = file_sha256(slot.resolved)
    entry = {"app": slot.name, "model_path": slot.model_path, "path": str(slot.resolved), "sha256": digest,
             "bytes": size, "args": list(slot.args), "served_id": dep.health(slot).served_id, "recorded": now()}

    def update(lock: Lock) -> None:
        lock.state(model).baseline = entry

    ws.record(f"deploy: {model}@{BASELINE} is what {slot.name} served before ftctl", update)
    log(f"recorded what {slot.name} serves now as {model}@{BASELINE}: {slot.resolved}"
        + ("" if digest else " (not readable: no sha256)"))


def check_gguf(path: Path, label: str, size: int | None, *, hint: str) -> None:
    """A GGUF file whole: the magic, and the size recorded at export (a truncated copy, a partial
    `dvc pull`, a file overwritten by something else), before any server is touched."""
    if path.suffix.lower() != ".gguf":
        return
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UsageError(f"{path} is not a GGUF file (it does not start with GGUF): {label} cannot be served",
                         hint=hint)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise UsageError(f"{path} has {actual} bytes, {size} were recorded for {label}: the file is "
                         + ("truncated" if actual < size else "not the one exported"), hint=hint)


def _served_files(ws, state: ModelState, model: str | None = None,
                  versions_only: bool = False) -> dict[str, tuple[str, str | None]]:
    """Absolute exported path -> (version, sha256), for telling what an app serves; with the base
    GGUF (``model`` given) and the baseline unless ``versions_only``."""
    out = {}
    if not versions_only:
        if model and (base := base_gguf(ws, model)):
            out[str(base)] = (BASE, None)
        if state.baseline:
            out[state.baseline.path] = (BASELINE, state.baseline.sha256)
    for v, entry in state.versions.items():
        for e in entry.exports:
            out[str((ws.root / e.path).resolve())] = (v, e.sha256)
    return out


# --- status -------------------------------------------------------------------------------------


def status(ws, model: str | None = None, log: Log = print, dep: Deployer | None = None) -> dict[str, Any]:
    model = model or ws.config.default_model
    dep = dep or deployer(ws, model, log)
    state = ws.read_lock().models.get(model) or ModelState()
    files = _served_files(ws, state, model)
    apps = []
    for slot in dep.slots():
        version, digest = files.get(str(slot.resolved) if slot.resolved else "", (None, None))
        health = dep.health(slot)
        apps.append(AppStatus(name=slot.name, role=slot.slot, version=version, model_path=slot.model_path,
                              sha256=digest, healthy=health.healthy, served_id=health.served_id,
                              port=slot.port).to_dict())
    d = state.deployment
    return {"model": model, "stable": d.stable, "canary": d.canary.model_dump() if d.canary else None,
            "apps": apps, "baseline": state.baseline.model_dump() if state.baseline else None,
            "history": list(state.history), "interrupted": _pending_path(ws, model).exists()}


# --- recording ----------------------------------------------------------------------------------


def _record(ws, model: str, action: str, version: str | None, *, stable: str | None = ...,
            canary: dict | None = ..., result: str = "ok", detail: str | None = None, apps=None,
            extra: dict | None = None, op: str | None = None) -> None:
    def update(lock: Lock) -> None:
        st = lock.state(model)
        if stable is not ...:
            st.deployment.stable = stable
        if canary is not ...:
            st.deployment.canary = canary
        if apps is not None:
            st.deployment.apps = apps
        st.history.append(history_entry(st, action, version, result, **({"detail": detail} if detail else {}),
                                        **(extra or {}), **({"op": op} if op else {})))

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
#
# Each change runs as: validate (dep.check, dep.snapshot: a broken configuration is refused here,
# before any note), note (the snapshot to put back), act, record in models.lock (with the note's
# id), persist (pm2 save), drop the note. A kill before the record leaves a note whose id is not
# in the history: the next command puts the snapshot back. A kill after it leaves a note whose
# id is: the change is recorded, so the next command only persists and drops the note.


def _pending_path(ws, model: str) -> Path:
    return ws.root / ".ftctl" / "deploy" / f"{model}.pending.json"


def _fault(step: str) -> None:
    """Fault injection for the journal's tests: ``FTCTL_KILL_AT=<step>`` kills this process there
    (SIGKILL: no cleanup runs, as in a power cut). Steps: noted, handoff, changed, recorded."""
    if os.environ.get("FTCTL_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _change(ws, model: str, dep: Deployer, action: str, version: str, act: Callable[[], None],
            record: Callable[[str], None], rolled_back: Callable[[RolledBack, str], None] | None = None) -> None:
    """Run ``act`` under a pending note; ``record(op)`` writes models.lock before the note goes."""
    path = _pending_path(ws, model)
    snapshot = dep.snapshot()  # raises for a configuration that does not load: no note, nothing changed
    op = secrets.token_hex(6)
    write_text(path, json.dumps({"action": action, "version": version, "op": op, "snapshot": snapshot}))
    _fault("noted")
    try:
        act()
    except RolledBack as e:
        # the deployer already put things back: say so in the history, then drop the note
        if rolled_back:
            rolled_back(e, op)
        _settle(dep, path)
        raise
    except Exception:
        # a tool failed half-way: put the recorded state back now; if that fails too, the note
        # stays and the next command (or `ftctl rollback`) retries it
        with contextlib.suppress(Exception):
            _restore(ws, model, dep, snapshot, dep.ctx.log)
            _settle(dep, path)
        raise
    _fault("changed")
    record(op)
    _fault("recorded")
    _settle(dep, path)


def _settle(dep: Deployer, path: Path) -> None:
    """What serves now comes back after a reboot; then the note can go."""
    dep.persist()
    path.unlink(missing_ok=True)


def _restore(ws, model: str, dep: Deployer, snapshot: str, log: Log) -> None:
    """The deployer's configuration as recorded, the canary and its share as recorded.
    A snapshot that does not load (kept by an older ftctl) is not written back: the
    configuration stays as it is now, which the user may have repaired."""
    try:
        dep.restore(snapshot)
    except ConfigError as e:
        log(f"[yellow]the interrupted command's snapshot is not put back[/]: {e.message}; the "
            "configuration stays as it is now")
    canary = ws.read_lock().state(model).deployment.canary
    if not canary:
        dep.route(0)
        dep.stop("canary")
        return
    # the recorded canary serves its own file again (a hand-off may have stopped it, or put
    # another version in its slot), then gets its recorded share
    want = artifact(ws, model, canary.version, dep)
    slot = next((s for s in dep.slots() if s.slot == "canary"), None)
    if slot is None or slot.resolved != want.path:
        dep.route(0)
        dep.serve("canary", want)
    dep.route(canary.percent)


def _recover(ws, model: str, dep: Deployer, log: Log) -> bool:
    path = _pending_path(ws, model)
    if not path.exists():
        return False
    try:
        note = json.loads(path.read_text())
        action, version, snapshot = note["action"], note["version"], note["snapshot"]
    except (ValueError, KeyError, TypeError):
        log(f"[yellow]{path} cannot be read; it is set aside[/] (the configuration stays as it is now)")
        path.replace(path.with_suffix(".unreadable"))
        return False
    if note.get("op") and any(h.get("op") == note["op"] for h in ws.read_lock().state(model).history):
        log(f"an interrupted `{action} {version}` had recorded its outcome; finishing it")
        _settle(dep, path)
        return True
    log(f"an interrupted `{action} {version}` left {model} half-changed: restoring the recorded state")
    _restore(ws, model, dep, snapshot, log)
    _record(ws, model, "recover", version, detail=f"undid interrupted {action}")
    _settle(dep, path)
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
    record_baseline(ws, model, dep, log)
    stable = _artifact_of(ws, model, d.stable, dep) if d.stable else None
    if canary is not None:
        if d.canary and d.canary.version != version:
            raise UsageError(f"{model}@{d.canary.version} is already the canary",
                             hint="`ftctl promote` or `ftctl rollback` it first")
        if not d.canary and version == d.stable:
            raise NothingToDo(f"{label} is already the stable version")

        def act() -> None:
            if not d.canary:
                log(f"starting a canary with {label}")
                dep.serve("canary", art)
            dep.route(canary)

        def record(op: str) -> None:
            apps = _apps_entry(dep, {"stable": stable, "canary": art})
            new = {"version": version, "percent": canary, "app": apps[-1]["name"]}
            # the stage begins now, at this share: `canary check` judges the feedback from this
            # moment (to the microsecond: history times are whole seconds) and the latency from
            # where the servers' counters stand, not their whole lives
            began = datetime.now(timezone.utc).isoformat()
            start = counters([{"role": s.slot, "port": s.port} for s in dep.slots()], ws.model(model).deploy.canary)
            _record(ws, model, "canary", version, canary=new, apps=apps, extra={"began": began, "counters": start},
                    op=op)

        _change(ws, model, dep, "canary", version, act, record)
        log(f"{canary}% of traffic goes to {label}")
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
    _fault("handoff")
    try:
        dep.serve("stable", art)
    finally:
        dep.route(0)  # stable (new, or the old one put back) takes all traffic again
        dep.stop("canary")


def _swap_stable(ws, model: str, dep: Deployer, action: str, art: Artifact, *, canary_ready: bool = False,
                 drop_canary: bool = False) -> None:
    dep.ctx.log(f"{action}: stable -> {art.label}")

    def act() -> None:
        if drop_canary:  # rollback --to with a canary up: all traffic on stable, the canary gone
            dep.route(0)
            dep.stop("canary")
        _serve_stable(dep, art, canary_ready=canary_ready)

    def rolled_back(e: RolledBack, op: str) -> None:
        _record(ws, model, action, art.version, result="rolled back", detail=e.message, op=op,
                **({"canary": None} if drop_canary else {}))

    def record(op: str) -> None:
        _record(ws, model, action, art.version, stable=art.version, canary=None,
                apps=_apps_entry(dep, {"stable": art}), op=op)

    _change(ws, model, dep, action, art.version, act, record, rolled_back)


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
        stable = _artifact_of(ws, model, d.stable, dep) if d.stable else None

        def act() -> None:
            dep.route(0)
            dep.stop("canary")

        _change(ws, model, dep, "rollback", d.canary.version, act,
                lambda op: _record(ws, model, "rollback", d.canary.version, canary=None,
                                   apps=_apps_entry(dep, {"stable": stable}), op=op))
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
    _swap_stable(ws, model, dep, "rollback", art, drop_canary=bool(d.canary))
    return status(ws, model, log, dep)


def _previous_stable(state: ModelState) -> str | None:
    """The stable version before the current one (from the history of successful changes)."""
    current = state.deployment.stable
    for h in reversed(state.history):
        if h.get("result") == "ok" and h.get("stable") and h["stable"] != current:
            return h["stable"]
    # before ftctl's first deploy the app served its baseline
    return BASELINE if state.baseline and current != BASELINE else None
