"""Run one job: the real `ftctl --json ...` command line in its own process group.

Used by the worker (queued jobs) and by the API (short deploy/promote/rollback runs): one way
to run a verb, with the CLI's lock, JSON and log. stdout (the JSON document) and stderr (the
human log) go to files under .ftctl/serve/jobs/, so nothing is lost if the service dies.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ftctl.errors import NOTHING_TO_DO, OK
from ftctl.serve import jobs as J
from ftctl.lib.atomic import read_json

# the trainer's progress line (the lora trainer's callbacks: "step 12/100  loss 1.2345 ...")
STEP_RE = re.compile(r"step (\d+)/(\d+)\s+loss ([-+0-9.eE]+|nan|inf)")
GRACE = 10.0  # seconds between SIGTERM and SIGKILL on cancel


def command(root: Path, argv: list[str], lock_wait: float, die_with_parent: bool) -> list[str]:
    return [sys.executable, "-m", "ftctl.cli.job", *(["--die-with-parent"] if die_with_parent else []),
            "--json", "-C", str(root), "--wait", str(lock_wait), *argv]


def child_env(token_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != token_env}  # the job never needs the API token
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    return env


def run_job(store: J.JobStore, job: dict, root: Path, *, lock_wait: float = 0, token_env: str = "FTCTL_SERVE_TOKEN",
        die_with_parent: bool = False, tick: Callable[[], bool] | None = None, interval: float = 0.5) -> dict:
    """Run ``job`` to the end; returns its final row. ``tick`` is called every interval and
    returns True to stop the job (the worker's shutdown)."""
    log, out = store.log_path(job["id"]), store.out_path(job["id"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fout, open(log, "ab") as flog:
        proc = subprocess.Popen(command(root, job["argv"], lock_wait, die_with_parent), cwd=root,
                                stdin=subprocess.DEVNULL, stdout=fout, stderr=flog,
                                env=child_env(token_env), start_new_session=True)
    store.update(job["id"], pid=proc.pid, state=J.RUNNING, started=job.get("started") or time.time())
    progress = Progress(log)
    stopped_by = None
    while proc.poll() is None:
        time.sleep(interval)
        p = progress.read()
        if p:
            store.update(job["id"], **p)
        if stopped_by is None and store.cancel_requested(job["id"]):
            stopped_by = J.CANCELLED
            _stop(proc)
        elif stopped_by is None and tick and tick():
            stopped_by = J.INTERRUPTED
            _stop(proc)
    p = progress.read()
    result = read_json(out)
    code = proc.returncode
    state = stopped_by or (J.DONE if code in (OK, NOTHING_TO_DO) else J.FAILED)
    store.update(job["id"], state=state, exit_code=code, result=result, finished=time.time(), pid=None,
                 **(p or {}), **({"eta": 0} if state == J.DONE else {}))
    return store.get(job["id"])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, SIGKILL it after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Progress:
    """Step, total, loss and an ETA from the job's log (the rate since the first step seen)."""

    def __init__(self, log: Path):
        self.log = log
        self.pos = 0
        self.first: tuple[float, int] | None = None
        self.last: dict | None = None

    def read(self) -> dict | None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return None
        cut = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
        self.pos += cut
        found = None
        for m in STEP_RE.finditer(chunk[:cut].decode("utf-8", "replace")):
            found = m
        if not found:
            return None
        step, total, loss = int(found.group(1)), int(found.group(2)), float(found.group(3))
        now = time.monotonic()
        if self.first is None:
            self.first = (now, step)
        t0, s0 = self.first
        eta = (now - t0) / (step - s0) * (total - step) if step > s0 else None
        self.last = {"step": step, "total": total, "loss": loss if loss == loss else None, "eta": eta}
        return self.last


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a job's log, secrets redacted."""
    from ftctl.lib.redact import redact

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [redact(x) for x in text.splitlines()[-lines:]] if lines else []
