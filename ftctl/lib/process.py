"""Processes: external tools (git, DVC, pm2, nginx, llama.cpp) run as argument lists, never
shell strings; waiting for a condition; a child that dies with its parent.

A tool's output is captured and secrets are redacted before anything reaches an error message
or a log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ftctl.lib.redact import redact
from ftctl.errors import ExternalToolError


def polite_threads() -> None:
    """OpenMP threads (torch's and llama.cpp's) that sleep at a barrier instead of spinning, unless
    the user chose otherwise. On a busy machine (training, a server, other jobs) spinning threads
    starve the ones they wait for: benchmarks/export.py at load 8 on 2 cores took 14.1x the bare
    tools spinning and 2.1x sleeping (the merged model's generation: 55 s vs 6 s); the GGUF backend
    ran 2x slower spinning at load 7. libgomp reads the setting once, when torch or llama.cpp first
    loads: the CLI asks at start (train, eval, export, cycle, serve's jobs), export and the GGUF
    backend ask again for callers of the Python API; a no-op once either library has loaded."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_tool(args: Sequence[str], *, cwd: Path | None = None, check: bool = True, env: dict | None = None,
        timeout: float | None = None, hint: str | None = None) -> subprocess.CompletedProcess:
    args = [str(a) for a in args]
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ExternalToolError(f"{args[0]} is not installed or not on PATH", hint=hint) from None
    except subprocess.TimeoutExpired:
        raise ExternalToolError(f"`{' '.join(args[:3])}` timed out after {timeout}s", hint=hint) from None
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = redact(detail[-1]) if detail else f"exit code {proc.returncode}"
        raise ExternalToolError(f"`{redact(' '.join(args[:3]))}` failed: {last}", hint=hint)
    return proc


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_tool(["git", *args], cwd=root, check=check)


def dvc(root: Path, *args: str, check: bool = True, hint: str | None = None) -> subprocess.CompletedProcess:
    """DVC's own CLI from the same environment as ftctl (no re-implementation of DVC)."""
    exe = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    cmd = [exe] if exe else [sys.executable, "-m", "dvc"]
    # no analytics daemon: it phones home (impossible on closed networks) on every command
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return run_tool([*cmd, *args], cwd=root, check=check, hint=hint, env=env)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os._exit(137)
