"""Shared fixtures: throwaway workspaces, running the real CLI, and CI-strict skips."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if importlib.util.find_spec("tests.fixtures_models"):
    pytest_plugins = ["tests.fixtures_models"]


def need(condition: bool, reason: str) -> None:
    """Skip locally when a real component is missing; under CI=true that is a failure."""
    if not condition:
        (pytest.fail if CI else pytest.skip)(f"missing: {reason}")


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """A git identity and a private DVC remote home, whatever the machine has."""
    home = tmp_path_factory.mktemp("xdg")
    env = {
        "GIT_AUTHOR_NAME": "ftctl tests", "GIT_AUTHOR_EMAIL": "tests@ftctl.invalid",
        "GIT_COMMITTER_NAME": "ftctl tests", "GIT_COMMITTER_EMAIL": "tests@ftctl.invalid",
        "XDG_DATA_HOME": str(home / "data"), "DVC_NO_ANALYTICS": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def workspace(tmp_path):
    """A fresh, initialised workspace (git + DVC + ftctl.yaml + models.lock)."""
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    init(tmp_path / "ws", model="assistant")
    return Workspace(tmp_path / "ws")


def run_ftctl(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = False,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess, as a user or cron job runs it."""
    proc = subprocess.run([sys.executable, "-m", "ftctl", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ftctl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(*args: str, cwd: Path | None = None, **kw):
    proc = run_ftctl("--json", *args, cwd=cwd, check=True, **kw)
    return json.loads(proc.stdout)


def hold_run_lock(root: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the workspace run lock (as `ftctl train` would), once it says so."""
    code = (f"import time\nfrom ftctl.registry.workspace import Workspace\n"
            f"with Workspace({str(root)!r}).run_lock('train'):\n"
            f"    print('held', flush=True)\n    time.sleep({seconds})\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture
def ftctl():
    return run_ftctl
