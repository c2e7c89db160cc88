"""`ftctl forget`: erase a conversation, or every conversation holding a value, through lineage.

1. Find: the sources are read in full (raw text, before scrubbing: a scrubbed snapshot no longer
   shows a member number, its source row does) for rows holding the value; those rows' conversation
   keys, and the given conversation id, are then looked up in every snapshot: the work tree's and
   each version's (from the DVC cache). A version whose snapshot held one is affected, and so are
   its exports and deployments (models.lock).
2. Tombstone: keyed hashes (the workspace secret: ftctl/data/tombstones.py) of the value and of
   each conversation key go into models.lock (``tombstones``), so every later collect drops them
   (filter ``forgotten``); never the value.
3. Flag: each affected version gets ``forgotten`` in models.lock (when, which tombstones, how many
   rows); `deploy`, `promote` and `rollback` refuse such a version unless ``--allow-forgotten``.
4. Plan: per affected model, rebuild the snapshot (``collect --since all``), train a new version
   on it, and export / deploy it where the affected version was. ``retrain=True`` runs the collect
   and train steps; export and deploy stay a person's decision (they are printed).
5. Purge (``purge=True``): the affected snapshots are rebuilt, then the DVC objects that held a
   forgotten row (each file of an old snapshot that contains one, and the old snapshots'
   directory manifests) are removed from the DVC cache and from the remote: exactly those
   objects, never one another snapshot still uses (ftctl/registry/purge.py).
6. Record: a deletion record in each affected model's models.lock history (hashes, versions,
   counts; no values), committed.

The old versions' .dvc files stay in git history; after a purge they point at objects that are
gone, so `dvc checkout` of such a version fails: that is the point. Adapters trained on the data
are not deleted (a flagged version is refused by deploy, and stays inspectable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftctl import feedback
from ftctl.data.tombstones import Tombstones, conversation_entry, value_entry
from ftctl.errors import UsageError
from ftctl.lib.times import now
from ftctl.records import Example
from ftctl.registry.lockfile import flag_forgotten
from ftctl.registry.workspace import SNAPSHOT_FILES, SPLITS


def forget(ws, *, conversation: str | None = None, value: str | None = None, model: str | None = None,
           retrain: bool = False, purge: bool = False, log=print) -> dict[str, Any]:
    if not conversation and not value:
        raise UsageError("nothing to forget", hint="pass a conversation id (--conversation) or a value (--value)")
    models = [ws.model(model).name] if model else list(ws.config.model_names())
    with ws.run_lock("forget"):
        from ftctl.data.tombstones import Rekey, entries_of, of_workspace

        of_workspace(ws)  # a workspace whose secret does not match its tombstones stops here
        secret = ws.secret()
        given = ([conversation_entry(conversation, secret)] if conversation else []) + \
            ([value_entry(value, secret)] if value else [])
        wanted = Tombstones.of(given, secret)
        rekey = Rekey(entries_of(ws.read_lock()), secret)  # old unsalted tombstones, keyed where rows show them
        keys = {conversation} if conversation else set()
        hits: list[str] = []  # one key per source row holding what is forgotten

        def visit(ex: Example) -> None:
            rekey.visit(ex)
            if wanted.matches(ex):
                keys.add(ex.key)
                hits.append(ex.key)

        for m in models:  # every row of every source, raw (before scrubbing), quietly
            feedback.scan(ws, m, None, visit, log=lambda *_: None)
        source_rows = len(hits)
        entries = given + [conversation_entry(k, secret) for k in sorted(keys) if k != conversation]
        found = Tombstones.of(entries, secret)
        reached = {m: _reached(ws, m, found) for m in models}
        affected = {m: r for m, r in reached.items() if r["versions"] or r["snapshot_rows"]}
        plan = {m: _plan(m, r) for m, r in affected.items()}
        hashes = [e["sha256"] for e in entries]
        record = {"time": now(), "action": "forget", "tombstones": [h[:16] for h in hashes],
                  "source_rows": source_rows, "conversations": len(keys), "retrain": retrain, "purge": purge}

        record["rekeyed"] = len(rekey.found)

        def update(lock) -> None:
            have = rekey.apply((lock.model_extra or {}).get("tombstones") or [], record["time"])
            known = {e["sha256"] for e in have}
            lock.tombstones = have + [{**e, "created": record["time"]} for e in entries if e["sha256"] not in known]
            for m in models:
                r = reached[m]
                lock.state(m).history.append({**record, "versions": r["versions"], "snapshot_rows": r["snapshot_rows"]})
                for v in r["versions"]:
                    flag_forgotten(lock.state(m).versions[v], {"time": record["time"], "tombstones": record["tombstones"],
                                                     "rows": r["rows"][v]})

        hit = ", ".join(f"{m} {' '.join(r['versions']) or 'snapshot'}" for m, r in affected.items()) or "none"
        ws.record(f"forget: {len(entries)} tombstone(s), {len(keys)} conversation(s); affected: {hit}", update)
        rebuilt, purged = {}, {}
        if purge:
            purged = _purge(ws, affected, found, retrain, log)
            rebuilt = {m: p.pop("rebuilt") for m, p in purged.items()}
        elif retrain:
            for m in affected:
                rebuilt[m] = _rebuild(ws, m, log)
    note = ("the old snapshots' objects are gone from the DVC cache and remote; adapters trained on them are "
            "flagged (deploy refuses them) and stay in git/DVC history" if purge else
            "earlier snapshots stay in the DVC cache and remote until `ftctl forget --purge`; affected versions "
            "are flagged: deploy and rollback refuse them unless --allow-forgotten")
    return {"tombstones": [h[:16] for h in hashes], "conversations": len(keys), "source_rows": source_rows,
            "rekeyed": record["rekeyed"],
            "reached": reached, "plan": plan, "retrained": rebuilt, "purged": purged, "note": note}


def _reached(ws, model: str, found: Tombstones) -> dict[str, Any]:
    from ftctl.registry.lineage import deployed_as

    lock = ws.read_lock()
    state = lock.models.get(model)
    out: dict[str, Any] = {"snapshot_rows": _count(_work_tree_rows(ws, model), found), "versions": [],
                           "rows": {}, "exports": [], "deployments": []}
    for v, e in (state.versions.items() if state else []):
        n = _count(_cached_rows(ws, (e.dataset or {}).get("md5")), found)
        if not n:
            continue
        out["versions"].append(v)
        out["rows"][v] = n
        out["exports"] += [x.get("path") for x in e.exports if x.get("path")]
        where = deployed_as(lock, model, v)
        if where:
            out["deployments"].append(f"{v} ({where})")
    return out


# the files holding input rows: the splits, the disliked answers that are in none of them, and
# the preference pairs (a DPO version learns from those)
ROW_FILES = tuple(SNAPSHOT_FILES[k] for k in (*SPLITS, "unpaired", "preferences"))


def _count(rows, found: Tombstones) -> int:
    from ftctl.data.curate import line_example

    return sum(1 for d in rows if found.matches(Example.from_dict(d) if "messages" in d else line_example(d)))


def _work_tree_rows(ws, model: str):
    d = ws.data_dir(model)
    for name in ROW_FILES:
        f = d / name
        if f.is_file():
            yield from _jsonl(f)


def _cached_rows(ws, md5: str | None):
    """Every row file of a snapshot, from the DVC cache (the manifest of a tracked directory)."""
    from ftctl.registry.lineage import cache_file

    if not md5 or not cache_file(ws, md5).is_file():
        return
    for item in json.loads(cache_file(ws, md5).read_text()):
        if item["relpath"] in ROW_FILES:
            f = cache_file(ws, item["md5"])
            if f.is_file():
                yield from _jsonl(f)


def _jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _plan(model: str, r: dict[str, Any]) -> list[str]:
    steps = [f"ftctl collect --model {model} --since all   # rebuild the snapshot without the forgotten rows",
             f"ftctl train --model {model}   # a new version on it (replaces {', '.join(r['versions']) or 'the snapshot'})"]
    if r["exports"]:
        steps.append("ftctl export latest   # the affected versions were exported: " + ", ".join(r["exports"]))
    if r["deployments"]:
        steps.append("ftctl deploy latest   # the affected versions are deployed: " + ", ".join(r["deployments"]))
    return steps


def _rebuild(ws, model: str, log) -> dict[str, Any]:
    from ftctl.data.collect import collect
    from ftctl.train import train

    c = collect(ws, model, since="all", log=log)
    t = train(ws, model, log=log) if ws.read_lock().state(model).versions else None
    return {"snapshot": c.get("snapshot"), "kept": c["kept"], "forgotten": c["filtered"].get("forgotten", 0),
            "version": (t or {}).get("version")}


def _purge(ws, affected: dict[str, dict], found: Tombstones, retrain: bool, log) -> dict[str, dict]:
    """Rebuild each affected model's snapshot, then remove the objects that held a forgotten row
    from the DVC cache and remote: never one a snapshot still in use lists."""
    from ftctl.data.collect import collect
    from ftctl.registry import purge as objects
    from ftctl.registry.lineage import cache_file

    lock = ws.read_lock()
    old: dict[str, set[str]] = {}  # model -> .dir objects of the snapshots that held a forgotten row
    for m, r in affected.items():
        st = lock.state(m)
        dirs = {(st.versions[v].dataset or {}).get("md5") for v in r["versions"]}
        if r["snapshot_rows"] and st.dataset:
            dirs.add(st.dataset.get("md5"))
        old[m] = dirs - {None}
    out: dict[str, dict] = {}
    for m in affected:  # rebuilt first: a purge never leaves a model without its snapshot
        if retrain:
            out[m] = {"rebuilt": _rebuild(ws, m, log)}
        else:
            c = collect(ws, m, since="all", log=log)
            out[m] = {"rebuilt": {"snapshot": c.get("snapshot"), "kept": c["kept"],
                                  "forgotten": c["filtered"].get("forgotten", 0), "version": None}}
    lock = ws.read_lock()
    keep: set[str] = set()  # every object a snapshot in use lists: the rebuilt ones, the unaffected versions'
    for m, st in lock.models.items():
        keep |= objects.objects_of(ws, (st.dataset or {}).get("md5"))
        for v, e in st.versions.items():
            if v not in affected.get(m, {}).get("versions", ()):
                keep |= objects.objects_of(ws, (e.dataset or {}).get("md5"))
    remote = ws.default_remote()
    for m, dirs in old.items():
        tainted, unchecked = set(), []
        for d in sorted(dirs):
            items = objects.manifest(ws, d)
            if items is None:  # not in the local cache: its files cannot be read to be checked
                unchecked.append(d)
                continue
            tainted.add(d)
            for item in items:
                f = cache_file(ws, item["md5"])
                if item["relpath"] in ROW_FILES and f.is_file() and _count(_jsonl(f), found):
                    tainted.add(item["md5"])
        result = objects.remove(ws, tainted - keep, remote)
        out[m].update({**result, "unchecked": unchecked})
        if unchecked:
            log(f"[yellow]{m}: {len(unchecked)} old snapshot(s) are not in the local DVC cache and were not "
                f"checked[/] (`dvc fetch` them, then run `ftctl forget --purge` again)")
        log(f"{m}: removed {result['cache']} object(s) from the DVC cache"
            + (f" and {result['remote']} from remote {remote}" if remote else ""))

    def update(lock) -> None:
        for m, p in out.items():
            lock.state(m).history.append({"time": now(), "action": "purge", "objects": p["objects"],
                                          "cache": p["cache"], "remote": p["remote"], "remote_name": p["remote_name"],
                                          "unchecked": len(p["unchecked"]), "tombstones": sorted(found_ids(found))})

    ws.record(f"forget --purge: {sum(p['objects'] for p in out.values())} DVC object(s) removed", update)
    return out


def found_ids(found: Tombstones) -> set[str]:
    return {h[:16] for h in found.conversations | found.values}

