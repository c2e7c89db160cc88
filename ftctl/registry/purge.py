"""Remove exact objects from the DVC cache and remote (`ftctl forget --purge`).

`dvc gc` decides what to keep from a scope (the workspace, branches, tags, commits) and deletes
everything else: it has no mode for "these objects", and every scope still reaches a forgotten
snapshot through git history. So a purge goes one level down, to what `dvc gc -c` itself
deletes through: DVC's object databases, the repo's local cache (``repo.cache.local``) and the
remote's (``repo.cloud.get_remote_odb``), and deletes exactly the given objects from each.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ftctl.errors import ExternalToolError
from ftctl.registry.lineage import cache_file


def manifest(ws, dir_md5: str) -> list[dict[str, Any]] | None:
    """The items (relpath, md5) of a tracked directory, from its .dir object; None when the
    local cache does not have it."""
    f = cache_file(ws, dir_md5)
    if not f.is_file():
        return None
    return json.loads(f.read_text(encoding="utf-8"))


def objects_of(ws, dir_md5: str | None) -> set[str]:
    """A tracked directory's .dir object and every file object it lists."""
    if not dir_md5:
        return set()
    return {dir_md5, *(item["md5"] for item in manifest(ws, dir_md5) or [])}


def remove(ws, oids: Iterable[str], remote: str | None) -> dict[str, Any]:
    """Delete ``oids`` from ``remote`` (a configured DVC remote's name; None: none), then from
    the local cache. Returns how many each held and deleted."""
    from dvc.repo import Repo

    oids = sorted(set(oids))
    out: dict[str, Any] = {"objects": len(oids), "cache": 0, "remote": None, "remote_name": remote}
    if not oids:
        return out
    try:
        with Repo(str(ws.root)) as repo:
            # the remote first: if it fails, the local cache still holds every object, so a rerun
            # finds the same snapshots to check and purges what is left
            if remote:
                odb = repo.cloud.get_remote_odb(remote, "gc -c", hash_name="md5")
                # DVC's filesystems answer "not found" for a remote they cannot reach (HTTP): an
                # object that seems absent may be there. A remote that shows no object folder at
                # all is not purged blind: nothing is deleted anywhere
                if not odb.fs.exists(odb.path):
                    raise FileNotFoundError(f"remote {remote!r} shows no objects at {odb.path} (unreachable, "
                                            "or never pushed to); nothing was deleted")
                out["remote"] = _delete(odb, oids)
            out["cache"] = _delete(repo.cache.local, oids)
    except Exception as e:  # noqa: BLE001 (DVC's own errors: a remote unreachable, a config broken)
        raise ExternalToolError(f"removing {len(oids)} object(s) from DVC failed: {e}",
                                hint="the tombstones are recorded and the snapshot rebuilt; rerun "
                                     "`ftctl forget --purge` with the same value once DVC works") from e
    return out


def _delete(odb, oids: list[str]) -> int:
    n = 0
    for oid in oids:
        if odb.exists(oid):
            odb.delete(oid)
            n += 1
    return n
