"""The job store: one SQLite file under .ftctl/serve/, shared by the API and the worker process.

SQLite (stdlib) rather than a task-queue library: there is one worker and one machine, the
queue must survive restarts, and the dashboard needs the same rows the API returns. WAL mode
lets the API read while the worker writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftctl.lib.atomic import write_text

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = "queued", "running", "done", "failed", "cancelled", "interrupted"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- train | cycle | evaluate | deploy | promote | rollback
    params TEXT NOT NULL,          -- the validated request (JSON)
    argv TEXT NOT NULL,            -- the ftctl command line it runs (JSON list, no secrets)
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    result TEXT,                   -- the command's --json output
    step INTEGER, total INTEGER, loss REAL, eta REAL,
    pid INTEGER,
    cancel INTEGER NOT NULL DEFAULT 0,
    resumed_from TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
CREATE TABLE IF NOT EXISTS worker (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER, beat REAL);
"""


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    def log_path(self, job_id: str) -> Path:
        return self.path.parent / "jobs" / f"{job_id}.log"

    def out_path(self, job_id: str) -> Path:
        return self.path.parent / "jobs" / f"{job_id}.json"

    # --- writing ---------------------------------------------------------------------------

    def add(self, kind: str, params: dict, argv: list[str], *, state: str = QUEUED,
            resumed_from: str | None = None) -> dict:
        job_id = new_id()
        with self._db() as db:
            db.execute("INSERT INTO jobs (id, kind, params, argv, state, created, resumed_from) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (job_id, kind, json.dumps(params), json.dumps(argv), state, time.time(), resumed_from))
        return self.get(job_id)

    def claim_next(self, pid: int) -> dict | None:
        """The oldest queued job, now running (atomic: BEGIN IMMEDIATE holds the write lock)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE state = ? ORDER BY created LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET state = ?, started = ?, pid = ? WHERE id = ?",
                       (RUNNING, time.time(), pid, row["id"]))
            db.execute("COMMIT")
        return self.get(row["id"])

    def update(self, job_id: str, **fields: Any) -> None:
        allowed = {"state", "started", "finished", "exit_code", "result", "step", "total", "loss", "eta", "pid"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"unknown job fields: {set(fields) - allowed}")
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k} = ?" for k in fields)  # keys from the allow-list above, values bound
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))  # noqa: S608

    def rewrite_results(self, change) -> int:
        """Rewrite stored results (the row and the job's JSON output file) where ``change``
        returns another object; returns how many. For data an older ftctl stored raw."""
        n = 0
        with self._db() as db:
            for row in db.execute("SELECT id, result FROM jobs WHERE result IS NOT NULL").fetchall():
                old = json.loads(row["result"])
                new = change(old)
                if new is old:
                    continue
                db.execute("UPDATE jobs SET result = ? WHERE id = ?", (json.dumps(new), row["id"]))
                if self.out_path(row["id"]).is_file():
                    write_text(self.out_path(row["id"]), json.dumps(new, indent=2))
                n += 1
        if n:  # the old rows' bytes are not left in free pages of the file either
            with self._db() as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.execute("VACUUM")
        return n

    def request_cancel(self, job_id: str) -> dict | None:
        """A queued job is cancelled at once; a running one is flagged for the worker to stop."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE jobs SET state = ?, finished = ? WHERE id = ? AND state = ?",
                       (CANCELLED, time.time(), job_id, QUEUED))
            db.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND state = ?", (job_id, RUNNING))
            db.execute("COMMIT")
        return self.get(job_id)

    def mark_interrupted(self, kinds: tuple[str, ...] | None = None) -> list[str]:
        """Jobs left running by a killed service (or a dead worker: its ``kinds``) did not finish."""
        marks = ",".join("?" * len(kinds)) if kinds else ""
        where = "state = ?" + (f" AND kind IN ({marks})" if kinds else "")  # placeholders only
        args = (RUNNING, *(kinds or ()))
        with self._db() as db:
            ids = [r["id"] for r in db.execute(f"SELECT id FROM jobs WHERE {where}", args)]  # noqa: S608
            db.execute(f"UPDATE jobs SET state = ?, finished = ?, pid = NULL WHERE {where}",  # noqa: S608
                       (INTERRUPTED, time.time(), *args))
        return ids

    def beat(self, pid: int) -> None:
        with self._db() as db:
            db.execute("INSERT INTO worker (id, pid, beat) VALUES (1, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, beat = excluded.beat", (pid, time.time()))

    # --- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def cancel_requested(self, job_id: str) -> bool:
        with self._db() as db:
            row = db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def list(self, limit: int = 50, state: str | None = None) -> list[dict]:
        with self._db() as db:
            if state:
                rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY created DESC LIMIT ?", (state, limit))
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
            return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            return {r["state"]: r["n"] for r in db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def durations(self) -> list[tuple[str, float]]:
        """(kind, seconds) of every finished job that ran."""
        with self._db() as db:
            rows = db.execute("SELECT kind, finished - started AS s FROM jobs "
                              "WHERE started IS NOT NULL AND finished IS NOT NULL")
            return [(r["kind"], r["s"]) for r in rows]

    def worker_beat(self) -> tuple[int | None, float | None]:
        with self._db() as db:
            row = db.execute("SELECT pid, beat FROM worker WHERE id = 1").fetchone()
        return (row["pid"], row["beat"]) if row else (None, None)


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in ("params", "argv", "result"):
        if d.get(k) is not None:
            d[k] = json.loads(d[k])
    d["cancel"] = bool(d["cancel"])
    return d
