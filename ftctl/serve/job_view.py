"""A job as the API and the dashboard show it: its state and command line, progress, report
links, the tail of its log, and whether `ftctl train --resume` could finish it."""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.registry.workspace import Workspace
from ftctl.serve import jobs as J
from ftctl.serve.job_process import tail


def job_view(job: dict, root: Path, store: J.JobStore, log_lines: int = 20) -> dict:
    result = unscrubbed_withheld(job["result"])
    links = {}
    if isinstance(result, dict):
        for fmt, path in (result.get("reports") or {}).items():
            links[fmt] = "/" + str(path)
    finished = job["state"] in J.FINISHED
    return {
        "id": job["id"], "kind": job["kind"], "state": job["state"], "params": job["params"],
        "command": ["ftctl", *job["argv"]], "created": _iso(job["created"]), "started": _iso(job["started"]),
        "finished": _iso(job["finished"]), "exit_code": job["exit_code"],
        "progress": {"step": job["step"], "total": job["total"], "loss": job["loss"],
                     "eta_seconds": None if job["eta"] is None else round(job["eta"], 1)},
        "result": result, "reports": links,
        "resumable": finished and job["kind"] in ("train", "cycle") and job["state"] != J.DONE
        and resumable(root, (job["params"] or {}).get("model")),
        "resumed_from": job["resumed_from"],
        "log_tail": tail(store.log_path(job["id"]), log_lines),
    }


def unscrubbed_withheld(result):
    """A comparison stored before eval results were scrubbed (issue 20) quotes raw examples in
    `changed`: kept without them (its report on disk was scrubbed all along). The service
    rewrites such stored results when it starts; this covers any written since by an old CLI."""
    if isinstance(result, dict) and result.get("changed") and not result.get("scrubbed"):
        return {**result, "changed": [], "changed_withheld": len(result["changed"])}
    return result


def resumable(root: Path, model: str | None) -> bool:
    """Is there a run `ftctl train --resume` would finish? (the train verb's own lookup)"""
    from ftctl.train import unfinished_run

    with contextlib.suppress(FtctlError):
        ws = Workspace(root)
        unfinished_run(ws, ws.model(model).name)
        return True
    return False


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).replace(microsecond=0).isoformat()
