"""GET /health: the service, the worker and each dependency, with a status code for load balancers.

200 when the service can do its work (worker alive, disk not full), 503 otherwise; a failing
dependency the service does not need to answer (a source database, the DVC remote, pm2) makes
the status "degraded" with 200, and is named. The dependency checks are `ftctl doctor`'s own
(its public checks; doctor checks a running service through :func:`ftctl.doctor.service`),
cached for a few seconds because DVC's CLI is slow to start.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

WORKER_STALE = 10.0  # seconds without a heartbeat: the worker is not running
MIN_FREE = 1 << 30  # bytes of free disk below which jobs would fail
TTL = 15.0


class Health:
    def __init__(self, root: Path, store, worker_alive):
        self.root = Path(root)
        self.store = store
        self.worker_alive = worker_alive
        self._deps: list[dict] = []
        self._at = 0.0
        self._lock = threading.Lock()

    def report(self) -> tuple[int, dict]:
        core = [self._worker(), self._disk()]
        deps = self._dependencies()
        critical_ok = all(c["ok"] for c in core)
        status = "ok" if critical_ok and all(c["ok"] for c in deps) else ("degraded" if critical_ok else "fail")
        checks = [{**c, "critical": True} for c in core] + [{**c, "critical": False} for c in deps]
        return (200 if critical_ok else 503), {"status": status, "checks": checks}

    def _worker(self) -> dict:
        pid, beat = self.store.worker_beat()
        fresh = beat is not None and time.time() - beat < WORKER_STALE
        ok = fresh and self.worker_alive()
        return {"name": "worker", "ok": ok,
                "detail": f"pid {pid}, heartbeat {time.time() - beat:.1f}s ago" if beat else "not started"}

    def _disk(self) -> dict:
        free = shutil.disk_usage(self.root).free
        return {"name": "disk", "ok": free >= MIN_FREE, "detail": f"{free / 2**30:.1f} GiB free"}

    def _dependencies(self) -> list[dict]:
        with self._lock:
            if time.monotonic() - self._at > TTL:
                self._deps = _doctor_checks(self.root)
                self._at = time.monotonic()
            return self._deps


def _doctor_checks(root: Path) -> list[dict]:
    from ftctl import doctor
    from ftctl.lib.redact import redact
    from ftctl.registry.workspace import Workspace

    ws = Workspace(root)
    checks = {"dvc remote": lambda: [doctor.dvc_remote(ws)], "databases": lambda: doctor.databases(ws),
              "pm2": lambda: [doctor.pm2(root)]}
    out = []
    for name, check in checks.items():
        try:
            out += [{"name": c.name, "ok": c.ok, "detail": redact(c.detail)} for c in check()]
        except Exception as e:  # noqa: BLE001 - a broken check is a failed check, never a 500
            out.append({"name": name, "ok": False, "detail": redact(f"{type(e).__name__}: {e}")[:200]})
    return out
