"""ftctl init, the workspace, config errors, the registry, refs: through the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.registry import lockfile
from ftctl.errors import ConfigError, FtctlError, LockfileError
from ftctl.registry.lockfile import VersionEntry
from ftctl.registry.versions import next_version
from ftctl.lib.times import now
from ftctl.registry.workspace import Workspace
from tests.conftest import run_ftctl, run_json


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def record_version(ws: Workspace, model="assistant", major=False, metrics=None, payload=b"w"):
    """Store a fake adapter and record a version through the core, as `ftctl train` does."""
    version = next_version(ws.read_lock(), model, major)
    d = ws.adapter_dir(model, version)
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(payload + version.encode())

    def update(lock):
        st = lock.state(model)
        parent = max(st.versions, default=None)
        st.versions[version] = VersionEntry(version=version, parent=parent, created=now(),
                                            base={"ref": "tiny"}, adapter={"path": ws.rel(d)},
                                            metrics=metrics or {"val_loss": 1.5})

    with ws.run_lock("test"):
        ws.record(f"train {model} {version}", update, track=[d], tag=(model, version))
    return version


def test_init_creates_a_workspace_and_is_idempotent(tmp_path):
    d = tmp_path / "w"
    out = run_json("init", str(d), "--model", "medicalqa")
    assert out["changed"] and "git init" in out["done"] and "dvc init" in out["done"]
    for f in ("ftctl.yaml", "models.lock", ".dvc/config", ".gitignore"):
        assert (d / f).exists(), f
    assert "/.ftctl/" in (d / ".gitignore").read_text()
    assert git(d, "status", "--porcelain") == ""
    head = git(d, "rev-parse", "HEAD")
    again = run_json("init", str(d), "--model", "medicalqa")
    assert again["changed"] is False and git(d, "rev-parse", "HEAD") == head
    # the remote lives outside the work tree and outside the committed config
    assert "ftctl-local" in (d / ".dvc/config.local").read_text()
    assert "ftctl-local" not in (d / ".dvc/config").read_text()
    ws = Workspace(d)
    assert ws.config.default_model == "medicalqa" and ws.read_lock().models == {}


def test_init_refuses_broken_state_and_keeps_the_file(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "ftctl.yaml").write_text("schema: 1\ndefault_model: [oops\n")
    before = (d / "ftctl.yaml").read_text()
    proc = run_ftctl("init", str(d))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    assert (d / "ftctl.yaml").read_text() == before


def test_init_inside_another_repository_says_so(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    proc = run_ftctl("init", str(tmp_path / "sub"))
    assert proc.returncode == 1 and "inside another git repository" in proc.stderr


def test_invalid_model_name_in_init(tmp_path):
    proc = run_ftctl("init", str(tmp_path / "w"), "--model", "../evil")
    assert proc.returncode == 2 and "invalid model name" in proc.stderr


def test_outside_a_workspace(tmp_path):
    proc = run_ftctl("versions", cwd=tmp_path)
    assert proc.returncode == 2
    assert "not an ftctl workspace" in proc.stderr and "ftctl init" in proc.stderr


@pytest.mark.parametrize("old, new, expect", [
    ("min_rating: 4", "min_ratin: 4", "curate.min_ratin: unknown key"),
    ("min_rating: 4", "min_rating: lots", "curate.min_rating"),
    ("schema: 1", "schema: 1\ntypo_section: 1", "typo_section: unknown key"),
    ("sources: []", "sources:\n  - {name: pg, kind: postgres, dsn: '${FTCTL_TEST_UNSET_VAR}'}",
     "sources[0].dsn: environment variable FTCTL_TEST_UNSET_VAR is not set"),
    ("  assistant: {}", "  assistant: {}\n  BAD NAME: {}", "invalid model name"),
    ("schema: 1", "schema: 1\ncurate: {}", "duplicate key"),
    ("  assistant: {}", "  assistant:\n    train: {trainer: [1]}", "models.assistant.train.trainer"),
])
def test_invalid_config_names_the_key(workspace, old, new, expect):
    cfg = workspace.config_path
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    # a plugin section's ${VAR} is checked by the commands that use it, and by `config validate`
    proc = run_ftctl("config", "validate" if "environment variable" in expect else "show", cwd=workspace.root)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_without_a_deployment_says_what_to_set(workspace):
    proc = run_ftctl("status", cwd=workspace.root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no deployment is configured for 'assistant'" in proc.stderr
    assert "deploy.pm2: ecosystem, app" in proc.stderr  # the pm2 deployer's required settings, by name
    # valid (nothing uses it yet), and `config validate` names what is not set up
    checked = run_json("config", "validate", cwd=workspace.root)
    assert checked["valid"] and checked["not_set_up"] == ["models.assistant.deploy.pm2 (needs ecosystem, app)"]


def test_missing_config_file(workspace):
    with pytest.raises(ConfigError, match="does not exist"):
        from ftctl.config import load

        load(workspace.root / "nope.yaml")


def test_overrides_and_masked_secrets(workspace):
    cfg = workspace.config_path
    cfg.write_text(cfg.read_text().replace(
        "sources: []", "sources:\n  - {name: pg, kind: postgres, dsn: '${FTCTL_PG}', table: t}"))
    env = {"FTCTL_PG": "postgresql://app:hunter2@127.0.0.1/chat"}
    shown = run_json("--set", "curate.min_rating=5", "--set", "train.lora.r=32", "config", "show",
                     cwd=workspace.root, env=env)
    assert shown["curate"]["min_rating"] == 5 and shown["train"]["lora"] == {"r": 32}
    text = json.dumps(shown)
    assert "hunter2" not in text and "app:****@127.0.0.1" in text
    model = run_json("--set", "models.assistant.curate.min_rating=2", "config", "show", "--model", "assistant",
                     cwd=workspace.root, env=env)
    assert model["curate"]["min_rating"] == 2
    bad = run_ftctl("--set", "novalue", "config", "show", cwd=workspace.root, env=env)
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr


def test_several_models_merge_defaults(workspace):
    cfg = workspace.config_path
    cfg.write_text(cfg.read_text().replace(
        "  assistant: {}", "  assistant: {}\n  billing:\n    base: ./models/other\n    curate: {min_rating: 5}"))
    ws = Workspace(workspace.root)
    assert ws.model("billing").curate.min_rating == 5 and ws.model("billing").base == "./models/other"
    assert ws.model("billing").curate.dedup == "normalized"  # inherited default
    assert ws.model().curate.min_rating == 4
    with pytest.raises(ConfigError, match="no model named 'nope'"):
        ws.model("nope")


def test_versions_tags_and_contract(workspace):
    assert record_version(workspace) == "v1.0"
    assert record_version(workspace) == "v1.1"
    assert record_version(workspace, major=True) == "v2.0"
    root = workspace.root
    # GTO's grammar: a full semantic version (gto ignores `assistant@v1.1`)
    assert git(root, "tag", "--list").split() == ["assistant@v1.0.0", "assistant@v1.1.0", "assistant@v2.0.0"]
    assert git(root, "cat-file", "-t", "assistant@v1.1.0") == "tag"  # annotated
    # the tag sits on the commit that recorded the version
    assert git(root, "rev-list", "-n1", "assistant@v2.0.0") == git(root, "rev-parse", "HEAD")
    assert git(root, "status", "--porcelain") == ""
    rows = run_json("versions", cwd=root)
    assert [r["version"] for r in rows] == ["v1.0", "v1.1", "v2.0"]
    for r in rows:
        assert {"model", "version", "parent", "created", "tag", "metrics", "exports", "deployed"} <= set(r)
    assert rows[1]["parent"] == "v1.0" and rows[1]["tag"] == "assistant@v1.1.0"
    shown = run_json("show", "v1.1", cwd=root)
    assert shown["version"] == "v1.1" and shown["adapter"]["path"] == "adapters/assistant/v1.1"
    assert run_json("show", "latest", cwd=root)["version"] == "v2.0"
    assert run_json("show", "assistant@v1.0", cwd=root)["version"] == "v1.0"
    assert run_json("show", "assistant@v1.0.0", cwd=root)["version"] == "v1.0"  # as GTO writes it
    assert (root / "adapters/assistant/v1.0.dvc").exists()


def test_tags_of_older_workspaces_still_read(workspace):
    """Before GTO's grammar a version was tagged `assistant@v1.0`: show and checkout still find it."""
    record_version(workspace)
    root = workspace.root
    git(root, "tag", "-a", "assistant@v1.0", "-m", "old", "assistant@v1.0.0")
    git(root, "tag", "-d", "assistant@v1.0.0")
    shown = run_json("show", "v1.0", cwd=root)
    assert shown["tag"] == "assistant@v1.0" and shown["commit"] == git(root, "rev-parse", "HEAD")
    assert run_json("versions", cwd=root)[0]["tag"] == "assistant@v1.0"
    (root / "adapters/assistant/v1.0.dvc").unlink()
    assert run_json("checkout", "v1.0", cwd=root)["restored"] == ["data/assistant", "adapters/assistant/v1.0"][1:]


def test_gto_reads_the_tags(workspace):
    """GTO (the tag-based model registry) lists every version ftctl recorded."""
    gto = shutil.which("gto") or str(Path(sys.executable).with_name("gto"))
    if not Path(gto).exists():
        pytest.skip("gto is not installed (pip install 'ftctl[dev]')")
    record_version(workspace)
    record_version(workspace)
    def gto_versions(name):
        out = subprocess.run([gto, "show", name, "--json"], cwd=workspace.root, capture_output=True, text=True,
                             check=True).stdout
        return {v["version"]: v["commit_hexsha"] for v in json.loads(out)}

    versions = gto_versions("assistant")
    assert set(versions) == {"v1.0.0", "v1.1.0"}
    assert versions["v1.1.0"] == git(workspace.root, "rev-parse", "HEAD")
    # the grammar before issue 25: GTO skips `assistant@v1.1` (not a full semantic version)
    git(workspace.root, "tag", "-a", "other@v1.0", "-m", "old style")
    assert subprocess.run([gto, "show", "other", "--json"], cwd=workspace.root, capture_output=True,
                          text=True).stdout.strip() in ("", "[]")


@pytest.mark.parametrize("ref, msg", [
    ("v9.9", "unknown version 'v9.9'"),
    ("../../etc/passwd", "invalid version"),
    ("v1.0/../x", "invalid version"),
    ("stable", "no stable deployment"),
    ("Evil@v1.0", "invalid model name"),
])
def test_bad_refs_are_usage_errors(workspace, ref, msg):
    record_version(workspace)
    proc = run_ftctl("show", ref, cwd=workspace.root)
    assert proc.returncode == 2 and msg in proc.stderr, proc.stderr


def test_corrupt_lock_is_reported_never_rewritten(workspace):
    record_version(workspace)
    for broken in ("models: [unclosed\n", "schema: 99\n", "- a list\n", "models:\n  assistant:\n    versions: 7\n"):
        workspace.lock_path.write_text(broken)
        proc = run_ftctl("versions", cwd=workspace.root)
        assert proc.returncode == 1 and "models.lock" in proc.stderr and "git checkout" in proc.stderr
        assert workspace.lock_path.read_text() == broken
    with pytest.raises(LockfileError):
        workspace.read_lock()


def test_disk_full_during_lock_write_keeps_the_original(workspace, monkeypatch):
    record_version(workspace)
    original = workspace.lock_path.read_bytes()
    import os as _os

    real_fsync = _os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ftctl.lib.atomic.os.fsync", full)
    with pytest.raises(OSError, match="No space left"):
        lockfile.write(workspace.lock_path, workspace.read_lock())
    monkeypatch.setattr("ftctl.lib.atomic.os.fsync", real_fsync)
    assert workspace.lock_path.read_bytes() == original
    assert not list(workspace.root.glob(".models.lock.*"))  # no temp file left behind


def test_record_failure_rolls_back(workspace):
    record_version(workspace)
    head = git(workspace.root, "rev-parse", "HEAD")
    lock_before = workspace.lock_path.read_text()
    d = workspace.adapter_dir("assistant", "v1.1")
    d.mkdir(parents=True)
    (d / "w.safetensors").write_bytes(b"x")

    def update(lock):
        raise RuntimeError("boom")

    with workspace.run_lock("test"), pytest.raises(RuntimeError):
        workspace.record("train v1.1", update, track=[d], tag=("assistant", "v1.1"))
    assert git(workspace.root, "rev-parse", "HEAD") == head
    assert workspace.lock_path.read_text() == lock_before
    assert not (workspace.root / "adapters/assistant/v1.1.dvc").exists()
    assert "assistant@v1.1" not in git(workspace.root, "tag", "--list")  # nor assistant@v1.1.0


def test_git_identity_missing(workspace, monkeypatch, tmp_path):
    for k in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    subprocess.run(["git", "config", "--unset", "user.name"], cwd=workspace.root)
    with pytest.raises(FtctlError, match="no identity") as e:
        record_version(workspace)
    assert "git config user.email" in e.value.hint
    assert workspace.read_lock().models == {}


def test_dvc_remote_unreachable_keeps_the_version(workspace):
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "ftctl-local", "url", "/proc/ftctl-cannot-write"],
                   cwd=workspace.root, check=True)
    record_version(workspace)
    assert any("DVC push failed" in w for w in workspace.warnings)
    assert "v1.0" in workspace.read_lock().state("assistant").versions  # recorded, in the local cache
    proc = run_ftctl("push", cwd=workspace.root)
    assert proc.returncode == 1 and "failed" in proc.stderr
    doctor = json.loads(run_ftctl("--json", "doctor", cwd=workspace.root).stdout)
    remote = next(c for c in doctor if c["name"] == "dvc remote")
    assert remote["ok"] is False and remote["fix"]


def test_diff_and_log(workspace):
    record_version(workspace, metrics={"val_loss": 2.0})
    record_version(workspace, metrics={"val_loss": 1.0})
    d = run_json("diff", "v1.0", "v1.1", cwd=workspace.root)
    assert d["metrics"]["val_loss"] == {"a": 2.0, "b": 1.0}
    events = run_json("log", cwd=workspace.root)
    assert sorted(e["version"] for e in events if e["event"] == "version") == ["v1.0", "v1.1"]
    assert events == sorted(events, key=lambda e: e["time"], reverse=True)


def test_checkout_restores_from_cache_and_remote(workspace):
    import shutil

    record_version(workspace, payload=b"first")
    adapter = workspace.adapter_dir("assistant", "v1.0")
    shutil.rmtree(adapter)
    out = run_json("checkout", "v1.0", cwd=workspace.root)
    assert out["restored"] == ["adapters/assistant/v1.0"]  # this version has no dataset snapshot
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"firstv1.0"
    # the local cache lost too: DVC pulls from the remote
    shutil.rmtree(adapter)
    shutil.rmtree(workspace.root / ".dvc" / "cache")
    out = run_json("checkout", "v1.0", cwd=workspace.root)
    assert out["pulled"] is True and (adapter / "adapter_model.safetensors").read_bytes() == b"firstv1.0"
