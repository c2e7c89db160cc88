"""Reading the registry: versions, show, diff, log, checkout, push. Import-light (no torch)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ftctl.errors import ExternalToolError, FtctlError
from ftctl.registry.lockfile import Lock, forgotten_marks
from ftctl.lib.process import dvc, git
from ftctl.registry.versions import resolve, sorted_versions, split_ref, tag_name, tag_names


def deployed_as(lock: Lock, model: str, version: str) -> str | None:
    dep = lock.state(model).deployment
    if dep.canary and dep.canary.get("version") == version:
        return f"canary {dep.canary.get('percent')}%"
    if dep.stable == version:
        return "stable"
    return None


def version_rows(ws, model: str | None = None) -> list[dict[str, Any]]:
    """One row per version (the `ftctl versions --json` contract), oldest first."""
    lock = ws.read_lock()
    models = [model] if model else list(ws.config.model_names())
    rows = []
    tags = set(git(ws.root, "tag", "--list", check=False).stdout.split())
    for m in models:
        state = lock.models.get(m)
        if not state:
            continue
        if b := state.baseline:  # what the app served before ftctl: a version it did not make
            rows.append({
                "model": m, "version": "baseline", "parent": None, "created": b.recorded, "tag": None,
                "metrics": {}, "rows": {}, "exports": [{"kind": "gguf", "quant": None, "path": b.path, "parity": None}],
                "deployed": deployed_as(lock, m, "baseline"), "forgotten": False,
                "baseline": {"app": b.app, "sha256": b.sha256, "args": list(b.args), "served_id": b.served_id},
            })
        for v in sorted_versions(state.versions):
            e = state.versions[v]
            rows.append({
                "model": m, "version": v, "parent": e.parent, "created": e.created,
                "tag": next((t for t in tag_names(m, v) if t in tags), tag_name(m, v)), "metrics": e.metrics, "rows": _split_rows(e.dataset),
                "exports": [{k: x.get(k) for k in ("kind", "quant", "path", "parity")} for x in e.exports],
                "deployed": deployed_as(lock, m, v),
                "forgotten": bool(forgotten_marks(e)),  # trained on data `ftctl forget` erased since
            })
    return rows


def _split_rows(dataset: dict) -> dict[str, int]:
    rows = dataset.get("rows")
    return rows if isinstance(rows, dict) else {}


def resolve_ref(ws, ref: str, model: str | None = None) -> tuple[str, str]:
    """A command-line ref (``v1.1``, ``latest``, ``medicalqa@v1.1``) -> (model, version)."""
    m, r = split_ref(ref, model or ws.config.default_model)
    ws.model(m)  # unknown model -> config error naming the models
    return m, resolve(ws.read_lock(), m, r)


def show(ws, ref: str, model: str | None = None) -> dict[str, Any]:
    m, v = resolve_ref(ws, ref, model)
    if v == "base":
        cfg = ws.model(m)
        return {"model": m, "version": "base", "base": {"ref": cfg.base}}
    entry = ws.read_lock().state(m).versions[v].model_dump(mode="json")
    tag = existing_tag(ws, m, v)
    commit = git(ws.root, "rev-list", "-n", "1", tag, check=False).stdout.strip() or None
    return {"model": m, **entry, "tag": tag, "commit": commit}


def existing_tag(ws, model: str, version: str) -> str:
    """The version's tag as the workspace has it: GTO's ``m@v1.1.0``, or ``m@v1.1`` from before."""
    for name in tag_names(model, version):
        if git(ws.root, "rev-parse", "-q", "--verify", f"refs/tags/{name}", check=False).returncode == 0:
            return name
    return tag_name(model, version)


def diff(ws, a: str, b: str, model: str | None = None) -> dict[str, Any]:
    ea, eb = show(ws, a, model), show(ws, b, model)
    return {
        "a": ea["version"], "b": eb["version"],
        "base": _changed(ea.get("base", {}).get("sha256") or ea.get("base", {}).get("ref"),
                         eb.get("base", {}).get("sha256") or eb.get("base", {}).get("ref")),
        "params": _dict_diff(ea.get("training", {}).get("params", {}), eb.get("training", {}).get("params", {})),
        "metrics": {k: {"a": ea.get("metrics", {}).get(k), "b": eb.get("metrics", {}).get(k)}
                    for k in sorted(set(ea.get("metrics", {})) | set(eb.get("metrics", {})))},
        "data": _data_diff(ws, ea.get("dataset", {}), eb.get("dataset", {})),
        # what was scrubbed from each version's data (types, NER model, site recognizers, on_error)
        "scrub": _dict_diff(ea.get("dataset", {}).get("scrub") or {}, eb.get("dataset", {}).get("scrub") or {}),
    }


def _changed(x, y) -> dict[str, Any]:
    return {"a": x, "b": y, "changed": x != y}


def _dict_diff(a: dict, b: dict) -> dict[str, dict[str, Any]]:
    return {k: {"a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _data_diff(ws, da: dict, db: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"a_rows": da.get("rows"), "b_rows": db.get("rows"),
                           "same_snapshot": bool(da.get("md5")) and da.get("md5") == db.get("md5")}
    ka, kb = _snapshot_rows(ws, da.get("md5")), _snapshot_rows(ws, db.get("md5"))
    if ka is None or kb is None:
        out["note"] = "snapshot contents not in the local DVC cache: run `ftctl checkout` or `dvc pull`"
        return out
    out["added"] = len(set(kb) - set(ka))
    out["removed"] = len(set(ka) - set(kb))
    out["rating_mix"] = {"a": _rating_mix(ka.values()), "b": _rating_mix(kb.values())}
    return out


def _rating_mix(ratings) -> dict[str, int]:
    return dict(sorted(Counter("none" if r is None else str(r) for r in ratings).items()))


def cache_file(ws, md5: str) -> Path:
    """DVC 3's cache layout: .dvc/cache/files/md5/<first 2>/<rest>."""
    return ws.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _snapshot_rows(ws, md5: str | None) -> dict[str, Any] | None:
    """{row identity: rating} over every split of a snapshot, read from the DVC cache."""
    if not md5:
        return None
    manifest = cache_file(ws, md5)
    if not manifest.exists():
        return None
    rows: dict[str, Any] = {}
    for item in json.loads(manifest.read_text()):
        if not item["relpath"].endswith(".jsonl") or item["relpath"] in ("rejects.jsonl", "preferences.jsonl", "unpaired.jsonl"):
            continue
        f = cache_file(ws, item["md5"])
        if not f.exists():
            return None
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    d = json.loads(line)
                    rows[json.dumps(d.get("messages"), sort_keys=True)] = d.get("rating")
    return rows


def log(ws, model: str | None = None) -> list[dict[str, Any]]:
    """Versions, evaluations, exports and deployments, newest first."""
    lock = ws.read_lock()
    events = []
    for m in ([model] if model else ws.config.model_names()):
        state = lock.models.get(m)
        if not state:
            continue
        for v, e in state.versions.items():
            events.append({"time": e.created, "model": m, "event": "version", "version": v,
                           "detail": f"from {e.parent or 'base'}; " + ", ".join(
                               f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                               for k, val in list(e.metrics.items())[:4])})
            for ev in e.evals:
                events.append({"time": ev.get("time", e.created), "model": m, "event": "eval", "version": v,
                               "detail": ev.get("summary", "")})
        for h in state.history:
            events.append({"time": h.get("time"), "model": m, "event": h.get("action", "deploy"),
                           "version": h.get("version"), "detail": h.get("detail", "")})
    return sorted(events, key=lambda e: e["time"] or "", reverse=True)


def checkout(ws, ref: str, model: str | None = None) -> dict[str, Any]:
    """Restore a version's dataset snapshot and adapter into the work tree, verifying hashes.

    The version's .dvc pointers come from its tag; DVC restores the files from its cache,
    pulling from the remote when the cache lacks them.
    """
    m, v = resolve_ref(ws, ref, model)
    if v == "base":
        raise FtctlError("`base` has no dataset or adapter to check out")
    tag = existing_tag(ws, m, v)
    entry = ws.read_lock().state(m).versions[v]
    targets = []
    for rel in (f"data/{m}.dvc", (entry.adapter.get("path") or f"adapters/{m}/{v}") + ".dvc"):
        blob = git(ws.root, "show", f"{tag}:{rel}", check=False)
        if blob.returncode != 0:
            continue
        (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / rel).write_text(blob.stdout)
        targets.append(rel)
    if not targets:
        raise FtctlError(f"{tag} records no DVC-tracked files", hint="was it created by `ftctl train`?")
    proc = dvc(ws.root, "checkout", "--quiet", *targets, check=False)
    pulled = False
    if proc.returncode != 0:
        try:
            dvc(ws.root, "pull", "--quiet", *targets,
                hint="the DVC cache lacks these files and the remote did not provide them (`ftctl doctor`)")
        except ExternalToolError as e:
            raise FtctlError(f"cannot restore {tag}: {e.message}", hint=e.hint) from None
        pulled = True
    status = dvc(ws.root, "status", "--quiet", *targets, check=False)
    if status.returncode != 0:
        raise FtctlError(f"restored files of {tag} do not match their recorded hashes",
                         hint="run `dvc status` to see which; `dvc pull --force` re-fetches them")
    return {"model": m, "version": v, "restored": [t[:-4] for t in targets], "pulled": pulled}


def push(ws) -> dict[str, Any]:
    if not ws.default_remote():
        raise FtctlError("no DVC remote is configured", hint="run `ftctl init` or `dvc remote add -d NAME URL`")
    args = ["push", "--quiet"] + (["-r", ws.config.dvc.remote] if ws.config.dvc.remote else [])
    dvc(ws.root, *args, hint="is the remote reachable? `ftctl doctor` checks it")
    return {"pushed": True, "remote": ws.default_remote()}
