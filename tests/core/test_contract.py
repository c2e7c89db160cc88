"""The plugin contract and the house rules around it: typed kinds, no half plugins, settings that
explain themselves, --json after any command, ${VAR} only where used, file modes, the run lock."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest
from ruamel.yaml import YAML

from ftctl import plugins
from ftctl.errors import ConfigError, FtctlError, Locked
from ftctl.kinds import Deployer, Evaluator, Exporter, Source, Trainer
from tests.conftest import hold_run_lock, run_ftctl, run_json


@pytest.fixture(scope="module")
def shared_ws(tmp_path_factory):
    """One workspace for the read-only command checks (making one costs git + DVC init)."""
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    root = tmp_path_factory.mktemp("contract") / "ws"
    init(root, model="assistant")
    return Workspace(root)


def test_every_kind_is_abstract_and_typed():
    for base in (Source, Trainer, Evaluator, Exporter, Deployer):
        assert base.__abstractmethods__, base
    assert Deployer.__abstractmethods__ == {"serve", "stop", "slots", "health", "snapshot", "restore"}
    assert Trainer.train.__annotations__["request"] == "TrainRequest"
    assert Exporter.export.__annotations__["return"] == "ExportResult"


def test_a_plugin_that_leaves_a_primitive_out_is_refused():
    from ftctl.api import hookimpl

    class Half(Deployer):
        name = "half"

        def serve(self, slot, artifact):  # and nothing else
            pass

    class HalfPlugin:
        @hookimpl
        def register_deployers(self, register):
            register(Half)

    pm = plugins.manager()
    pm.register(HalfPlugin(), name="half-test")
    plugins.registry.cache_clear()
    try:
        with pytest.raises(ConfigError, match="does not implement health, restore, slots, snapshot, stop"):
            plugins.registry()
    finally:
        pm.unregister(name="half-test")
        plugins.registry.cache_clear()


def test_every_plugin_setting_has_a_description():
    missing = [f"{k}/{n}.{f}" for (k, n), r in plugins.registry().items()
               for f, info in r.cls.Config.model_fields.items() if not info.description]
    assert missing == []


def test_plugins_name_prints_settings_with_types_defaults_and_descriptions(shared_ws):
    workspace = shared_ws
    [row] = run_json("plugins", "pm2", cwd=workspace.root)
    by_name = {s["name"]: s for s in row["settings"]}
    assert by_name["app"]["required"] and by_name["app"]["type"] == "str"
    assert by_name["health_timeout"]["default"] == 120 and "healthy" in by_name["health_timeout"]["description"]
    human = run_ftctl("plugins", "lora", cwd=workspace.root, check=True).stdout
    assert "learning_rate" in human and "peak learning rate" in human
    bad = run_ftctl("plugins", "nope", cwd=workspace.root)
    assert bad.returncode == 2 and "available:" in bad.stderr


@pytest.mark.parametrize("argv", [["versions", "--json"], ["plugins", "--json"], ["config", "validate", "--json"],
                                  ["--json", "versions"]])
def test_json_is_accepted_after_the_command_too(shared_ws, argv):
    import json

    proc = run_ftctl(*argv, cwd=shared_ws.root, check=True)
    json.loads(proc.stdout)  # one JSON document, nothing else on stdout


def test_env_vars_resolve_only_in_the_sections_a_command_uses(workspace, monkeypatch):
    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["sources"] = [{"name": "clinic", "kind": "postgres", "dsn": "${CLINIC_DSN_E4}", "table": "t"}]
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    monkeypatch.delenv("CLINIC_DSN_E4", raising=False)
    assert run_json("versions", cwd=workspace.root) == []  # reads no source: the DSN is not needed
    for argv in (["collect"], ["config", "validate"]):  # these use (or check) every source
        proc = run_ftctl(*argv, cwd=workspace.root)
        assert proc.returncode == 2, proc.stderr
        assert "sources[0].dsn: environment variable CLINIC_DSN_E4 is not set" in proc.stderr
    assert workspace.read_lock().models == {}  # nothing recorded


def test_new_files_follow_the_umask_and_rewritten_files_keep_their_mode(tmp_path):
    from ftctl.lib.atomic import make_temp_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
        (tmp_path / "private.txt").write_text("secret")
        os.chmod(tmp_path / "private.txt", 0o600)
        write_text(tmp_path / "private.txt", "still secret")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
        assert stat.S_IMODE(make_temp_dir("x-", tmp_path).stat().st_mode) == 0o755
        os.umask(0o007)
        write_text(tmp_path / "group.txt", "x")
        assert stat.S_IMODE((tmp_path / "group.txt").stat().st_mode) == 0o660
    finally:
        os.umask(old)


def test_a_workspace_is_readable_by_the_team_under_umask_022(tmp_path):
    code = "import os; os.umask(0o022); from ftctl.cli.main import main; raise SystemExit(main(['init', 'ws']))"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True)
    for name in ("ftctl.yaml", "models.lock", ".gitignore"):
        assert stat.S_IMODE((tmp_path / "ws" / name).stat().st_mode) == 0o644, name


def test_core_verbs_take_the_run_lock_reentrantly(workspace):
    from ftctl.registry.workspace import locked

    seen = []

    @locked
    def outer(ws):
        seen.append(ws.holds_lock())
        inner(ws)  # a verb calling a verb (cycle -> train) re-enters, no deadlock

    @locked
    def inner(ws):
        seen.append(ws.holds_lock())
        ws.record("test: a model state", lambda lock: lock.state("assistant"))

    outer(workspace)
    assert seen == [True, True] and not workspace.holds_lock()
    with pytest.raises(FtctlError, match="without the workspace run lock"):
        workspace.record("test: unlocked", lambda lock: None)
    other = []  # another thread of the same process does not share the lock
    t = threading.Thread(target=lambda: other.append(workspace.holds_lock()))
    with workspace.run_lock("test"):
        t.start()
        t.join()
    assert other == [False]


def test_a_python_caller_of_a_core_verb_meets_another_runs_lock(workspace):
    from ftctl.deploy import rollout as deploy
    from ftctl import export

    assert export.export.__wrapped__ and deploy.rollback.__wrapped__  # decorated with @locked
    holder = hold_run_lock(workspace.root, 30)
    try:
        with pytest.raises(Locked):
            export.export(workspace, "v1.0")
    finally:
        holder.kill()
        holder.wait()
