"""Crashes and concurrency: kill -9 mid-commit, the run lock, a killed lock holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap


from tests.conftest import hold_run_lock, run_ftctl, run_json
from tests.core.test_workspace import git, record_version

# A child process that records v1.0 and SIGKILLs itself at a chosen git step.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import ftctl.registry.workspace as w
    from ftctl.registry.lockfile import VersionEntry
    root, step = sys.argv[1], sys.argv[2]
    real_git = w.git
    def git(r, *args, **kw):
        if args and args[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_git(r, *args, **kw)
    w.git = git
    ws = w.Workspace(root)
    d = ws.adapter_dir("assistant", "v1.0"); d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    def update(lock):
        lock.state("assistant").versions["v1.0"] = VersionEntry(version="v1.0", created=w.now())
    with ws.run_lock("train"):
        ws.record("train assistant v1.0", update, track=[d], tag=("assistant", "v1.0"))
""")


def kill_during(workspace, step):
    proc = subprocess.run([sys.executable, "-c", KILLER, str(workspace.root), step], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_before_commit_leaves_no_half_entry(workspace):
    head = git(workspace.root, "rev-parse", "HEAD")
    kill_during(workspace, "commit")
    assert (workspace.state_dir / "txn.json").exists()  # the journal says a record was cut short
    out = run_ftctl("push", cwd=workspace.root)  # any mutating command recovers first
    assert "Traceback" not in out.stderr
    assert git(workspace.root, "rev-parse", "HEAD") == head
    assert "v1.0" not in workspace.read_lock().state("assistant").versions
    assert git(workspace.root, "tag", "--list") == ""
    assert not (workspace.root / "adapters/assistant/v1.0.dvc").exists()
    assert git(workspace.root, "status", "--porcelain", "--untracked-files=no") == ""
    # and the next version commit works (the artifacts were kept: nothing lost)
    assert (workspace.adapter_dir("assistant", "v1.0") / "adapter_model.safetensors").exists()
    import shutil

    shutil.rmtree(workspace.adapter_dir("assistant", "v1.0"))
    assert record_version(workspace) == "v1.0"
    assert git(workspace.root, "tag", "--list") == "assistant@v1.0.0"


def test_kill_between_commit_and_tag_rolls_forward(workspace):
    kill_during(workspace, "tag")
    assert git(workspace.root, "tag", "--list") == ""  # not yet: the commit landed, the tag did not
    run_ftctl("push", cwd=workspace.root)
    assert git(workspace.root, "tag", "--list") == "assistant@v1.0.0"
    assert git(workspace.root, "rev-list", "-n1", "assistant@v1.0.0") == git(workspace.root, "rev-parse", "HEAD")
    assert [r["version"] for r in run_json("versions", cwd=workspace.root)] == ["v1.0"]


def test_run_lock_second_command_waits_or_exits_locked(workspace):
    holder = hold_run_lock(workspace.root, 6)
    try:
        proc = run_ftctl("push", cwd=workspace.root)
        assert proc.returncode == 4
        assert "`train`" in proc.stderr and f"pid {holder.pid}" in proc.stderr and "--wait" in proc.stderr
        waited = run_ftctl("--wait", "60", "checkout", "v9.9", cwd=workspace.root)
        assert waited.returncode == 2  # got the lock once the holder finished, then failed on the ref
    finally:
        holder.kill()
        holder.wait()


def test_lock_left_by_killed_process_is_recovered(workspace):
    holder = hold_run_lock(workspace.root, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (workspace.state_dir / "run.lock.json").exists()  # stale info is left behind...
    with workspace.run_lock("next", wait=5):  # ...but the OS lock died with its holder
        pass
