"""The worker: a separate process that runs queued jobs one at a time, oldest first.

`python -m ftctl.serve.queue_worker ROOT --lock-wait S --token-env NAME`, started (and restarted if
it dies) by the API. It dies with the API (PR_SET_PDEATHSIG); on SIGTERM it stops the running
job, which is then marked interrupted (a train job resumes with `--resume`).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from ftctl.serve import jobs as J
from ftctl.lib.process import die_with_parent
from ftctl.serve.job_process import run_job

POLL = 0.5


def store_path(root: Path) -> Path:
    return Path(root) / ".ftctl" / "serve" / "jobs.sqlite"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ftctl-serve-worker")
    ap.add_argument("root", type=Path)
    ap.add_argument("--lock-wait", type=float, default=0)
    ap.add_argument("--token-env", default="FTCTL_SERVE_TOKEN")
    args = ap.parse_args(argv)
    die_with_parent()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    store = J.JobStore(store_path(args.root))
    pid = os.getpid()
    last_beat = 0.0

    def tick() -> bool:
        nonlocal last_beat
        if time.monotonic() - last_beat > 1:
            store.beat(pid)
            last_beat = time.monotonic()
        return bool(stopping)

    while not tick():
        job = store.claim_next(pid)
        if job is None:
            time.sleep(POLL)
            continue
        run_job(store, job, args.root, lock_wait=args.lock_wait, token_env=args.token_env, die_with_parent=True,
            tick=tick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
