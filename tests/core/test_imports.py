"""The house rules on imports (docs/architecture.md), enforced: import-linter's contracts in
pyproject.toml hold for the whole tree, and they do catch an import against them."""

from __future__ import annotations

import ast
import os
import pkgutil
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import ftctl
from tests.conftest import ROOT, need

HEAVY = ("torch", "transformers", "peft", "llama_cpp", "numpy")


def lint_imports(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    need(exe is not None, "lint-imports (import-linter, in the `test` extra)")
    return subprocess.run([exe, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_contracts_catch_an_import_against_the_layers_and_a_plugin_past_the_door(tmp_path):
    """A copy of the tree with two bad imports added: a toolkit reaching up into the service, and
    a built-in plugin importing a toolkit directly instead of through ftctl.api."""
    for d in ("ftctl", "ftctl_plugins"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "ftctl/lib/digest.py", "a") as f:
        f.write("\n\ndef _probe():\n    from ftctl.serve import app  # noqa: F401\n")
    with open(tmp_path / "ftctl_plugins/sources/files.py", "a") as f:
        f.write("\nfrom ftctl.lib.basemodel import locate  # noqa: E402,F401\n")
    proc = lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "ftctl.lib.digest -> ftctl.serve.app" in proc.stdout
    assert "ftctl_plugins.sources.files -> ftctl.lib.basemodel" in proc.stdout
    assert "No cycles are allowed in ftctl." in proc.stdout  # lib -> serve -> ... -> lib


def test_the_door_contract_names_every_module_of_the_core_but_the_api():
    """A new top-level module of ftctl must be added to the plugins' forbidden list (and a layer)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    door = next(c for c in config["contracts"] if "ftctl.api" in c["name"])
    layered = {name.strip() for c in config["contracts"] if c["type"] == "layers"
               for layer in c["layers"] for name in layer.replace("|", ":").split(":")}
    children = {m.name for m in pkgutil.iter_modules(ftctl.__path__)}
    assert set(door["forbidden_modules"]) == {f"ftctl.{m}" for m in children - {"api"}}
    assert layered == children


def test_example_plugins_import_ftctl_only_through_the_api():
    """The third-party examples are single modules (import-linter takes packages only): the
    same rule as ftctl_plugins, read from their source."""
    files = sorted((ROOT / "examples").glob("*/*.py"))
    assert len(files) >= 3
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name == "ftctl" or name.startswith("ftctl."):
                    assert name == "ftctl.api", f"{f.relative_to(ROOT)}:{node.lineno} imports {name}"


@pytest.mark.parametrize("module", ["ftctl.api", "ftctl.kinds", "ftctl_plugins.trainers.lora",
                                    "ftctl_plugins.exporters.gguf"])
def test_the_door_is_light(module):
    """`ftctl --help` and `ftctl plugins` import every plugin, hence the API: no torch, no
    llama_cpp, not even numpy (the statistics load on first use)."""
    code = textwrap.dedent(f"""
        import sys
        import {module}
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_statistics_load_through_the_door_on_first_use():
    import ftctl.api as api
    from ftctl.lib import stats

    assert api.paired_test is stats.paired_test and api.WORSE == stats.WORSE
    assert set(api.__all__) >= {"load_model", "load_tokenizer", "resolve_base", "encode", "make_plan", "describe",
                                "run_tool", "redact", "open_llama", "TrainPlan", "paired_test"}
    assert all(hasattr(api, name) for name in api.__all__)
    with pytest.raises(AttributeError):
        api.not_a_name  # noqa: B018
