"""Plugins: built-ins load through the entry-point group; a third-party package does too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import run_ftctl, run_json

KINDS = {"source", "trainer", "evaluator", "exporter", "deployer", "guard"}


def test_plugins_json_contract(workspace):
    rows = run_json("plugins", cwd=workspace.root)
    assert rows, "no plugins loaded"
    for r in rows:  # the built-ins come from ftctl's own entry points; examples/ from theirs
        assert r["kind"] in KINDS and r["name"]
        assert (r["distribution"] == "ftctl") == r["module"].startswith("ftctl_plugins."), r
        assert r["config_schema"]["type"] == "object"


@pytest.fixture
def third_party(tmp_path):
    """A throwaway plugin distribution with an entry point, pip-installed into this environment."""
    pkg = tmp_path / "ftctl-hello"
    (pkg / "ftctl_hello").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ftctl-hello"
        version = "0.0.1"
        [project.entry-points.ftctl]
        hello = "ftctl_hello"
    """))
    (pkg / "ftctl_hello" / "__init__.py").write_text(textwrap.dedent("""
        import json
        import click
        from ftctl.hookspecs import hookimpl
        from ftctl.kinds import PluginConfig, Source
        from ftctl.records import Example

        class Greetings(Source):
            name = "greetings"
            class Config(PluginConfig):
                count: int = 2
            def read(self, since):
                for i in range(self.config.count):
                    yield Example(messages=[{"role": "user", "content": f"hi {i}"},
                                            {"role": "assistant", "content": "hello"}],
                                  source="greetings", source_id=str(i))

        @hookimpl
        def register_sources(register):
            register(Greetings)

        @hookimpl
        def register_commands(cli):
            @cli.command()
            @click.option("--count", default=2)
            def hello(count):
                '''Say hello through a plugin source.'''
                from ftctl.plugins import build
                from ftctl.kinds import Context
                from pathlib import Path
                src = build("source", "greetings", {"count": count}, Context(Path("."), "m", Path(".")), key="x")
                click.echo(json.dumps([e.prompt for e in src.read(None)]))
    """))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(pkg)], check=True)
    yield
    subprocess.run([*pip, "uninstall", "-y", "ftctl-hello"], check=True)


def test_third_party_plugin_is_loaded_and_driven(third_party, workspace):
    rows = run_json("plugins", cwd=workspace.root)
    mine = [r for r in rows if r["name"] == "greetings"]
    assert mine == [{**mine[0], "kind": "source", "distribution": "ftctl-hello"}]
    assert "count" in mine[0]["config_schema"]["properties"]
    out = run_ftctl("hello", "--count", "3", cwd=workspace.root, check=True)
    assert out.stdout.strip() == '["hi 0", "hi 1", "hi 2"]'
    assert "hello" in run_ftctl("--help").stdout
    bad = run_ftctl("hello", "--count", "x", cwd=workspace.root)
    assert bad.returncode == 2


HEAVY = ("torch", "transformers", "peft", "datasets", "llama_cpp")


@pytest.mark.parametrize("argv", [["--help"], ["versions"], ["config", "show"], ["status"], ["plugins"],
                                  ["collect", "--help"], ["train", "--help"]])
def test_light_commands_do_not_import_heavy_libraries(workspace, argv):
    code = textwrap.dedent(f"""
        import sys
        from ftctl.cli.main import main
        rc = main({argv!r})
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print("HEAVY", heavy, "RC", rc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=workspace.root, capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY [] RC"), (last, proc.stderr[-2000:])
