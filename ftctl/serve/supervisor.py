"""The queue worker's keeper: starts `python -m ftctl.serve.queue_worker` beside the API and
starts it again when it dies (the job it was running is marked interrupted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from ftctl.serve import jobs as J
from ftctl.serve.job_process import GRACE, child_env

WORKER_KINDS = ("train", "cycle", "evaluate")  # the job kinds the queue worker runs


class Supervisor:
    def __init__(self, root: Path, store: J.JobStore, *, lock_wait: float, token_env: str):
        self.root, self.store, self.lock_wait, self.token_env = root, store, lock_wait, token_env
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def start(self) -> None:
        log = open(self.store.path.parent / "worker.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftctl.serve.queue_worker", str(self.root), "--lock-wait", str(self.lock_wait),
             "--token-env", self.token_env],
            cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env(self.token_env))
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def watch(self) -> None:
        while not self.stopping:
            await asyncio.sleep(2)
            if not self.stopping and not self.alive():
                self.store.mark_interrupted(WORKER_KINDS)
                self.start()

    def stop(self) -> None:
        self.stopping = True
        if self.alive():
            self.proc.terminate()  # the worker stops its job (SIGTERM, then SIGKILL) and exits
            try:
                self.proc.wait(GRACE + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
