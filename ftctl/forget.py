"""`ftctl forget`: erase a conversation, or every conversation holding a value, through lineage.

1. Find: the sources are read in full (raw text, before scrubbing: a scrubbed snapshot no longer
   shows a member number, its source row does) for rows holding the value; those rows' conversation
   keys, and the given conversation id, are then looked up in every snapshot: the work tree's and
   each version's (from the DVC cache). A version whose snapshot held one is affected, and so are
   its exports and deployments (models.lock).
2. Tombstone: salted hashes of the value and of each conversation key go into models.lock
   (``tombstones``), so every later collect drops them (filter ``forgotten``); never the value.
3. Plan: per affected model, rebuild the snapshot (``collect --since all``), train a new version
   on it, and export / deploy it where the affected version was. ``retrain=True`` runs the collect
   and train steps; export and deploy stay a person's decision (they are printed).
4. Record: a deletion record in each affected model's models.lock history (hashes, versions,
   counts; no values), committed.

The old versions' files stay in git/DVC history: removing them from every clone and remote is a
`dvc gc` plus history rewrite that ftctl does not do behind anyone's back; the plan says so.
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
from ftctl.registry.workspace import SNAPSHOT_FILES, SPLITS


def forget(ws, *, conversation: str | None = None, value: str | None = None, model: str | None = None,
           retrain: bool = False, log=print) -> dict[str, Any]:
    if not conversation and not value:
        raise UsageError("nothing to forget", hint="pass a conversation id (--conversation) or a value (--value)")
    models = [ws.model(model).name] if model else list(ws.config.model_names())
    given = ([conversation_entry(conversation)] if conversation else []) + ([value_entry(value)] if value else [])
    wanted = Tombstones.of(given)
    with ws.run_lock("forget"):
        keys = {conversation} if conversation else set()
        hits: list[str] = []  # one key per source row holding what is forgotten

        def visit(ex: Example) -> None:
            if wanted.matches(ex):
                keys.add(ex.key)
                hits.append(ex.key)

        for m in models:  # every row of every source, raw (before scrubbing), quietly
            feedback.scan(ws, m, None, visit, log=lambda *_: None)
        source_rows = len(hits)
        entries = given + [conversation_entry(k) for k in sorted(keys) if k != conversation]
        found = Tombstones.of(entries)
        reached = {m: _reached(ws, m, found) for m in models}
        affected = {m: r for m, r in reached.items() if r["versions"] or r["snapshot_rows"]}
        plan = {m: _plan(m, r) for m, r in affected.items()}
        hashes = [e["sha256"] for e in entries]
        record = {"time": now(), "action": "forget", "tombstones": [h[:16] for h in hashes],
                  "source_rows": source_rows, "conversations": len(keys), "retrain": retrain}

        def update(lock) -> None:
            have = (lock.model_extra or {}).get("tombstones") or []
            known = {e["sha256"] for e in have}
            lock.tombstones = have + [{**e, "created": record["time"]} for e in entries if e["sha256"] not in known]
            for m in models:
                r = reached[m]
                lock.state(m).history.append({**record, "versions": r["versions"], "snapshot_rows": r["snapshot_rows"]})

        hit = ", ".join(f"{m} {' '.join(r['versions']) or 'snapshot'}" for m, r in affected.items()) or "none"
        ws.record(f"forget: {len(entries)} tombstone(s), {len(keys)} conversation(s); affected: {hit}", update)
        rebuilt = {}
        if retrain:
            for m in affected:
                rebuilt[m] = _rebuild(ws, m, log)
    return {"tombstones": [h[:16] for h in hashes], "conversations": len(keys), "source_rows": source_rows,
            "reached": reached, "plan": plan, "retrained": rebuilt,
            "note": "earlier versions stay in git and DVC history; purge them with `dvc gc` and a history "
                    "rewrite if your policy requires it"}


def _reached(ws, model: str, found: Tombstones) -> dict[str, Any]:
    from ftctl.registry.lineage import deployed_as

    lock = ws.read_lock()
    state = lock.models.get(model)
    out: dict[str, Any] = {"snapshot_rows": _count(_work_tree_rows(ws, model), found), "versions": [],
                           "exports": [], "deployments": []}
    for v, e in (state.versions.items() if state else []):
        n = _count(_cached_rows(ws, (e.dataset or {}).get("md5")), found)
        if not n:
            continue
        out["versions"].append(v)
        out["exports"] += [x.get("path") for x in e.exports if x.get("path")]
        where = deployed_as(lock, model, v)
        if where:
            out["deployments"].append(f"{v} ({where})")
    return out


# the files holding input rows: the splits, and the disliked answers that are in none of them
ROW_FILES = tuple(SNAPSHOT_FILES[k] for k in (*SPLITS, "unpaired"))


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
