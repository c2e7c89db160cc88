"""The three example plugins under examples/ (their own distributions, installed by `make install`)
drive the whole loop through the CLI: collect -> train -> export -> deploy -> canary -> rollback.

They import only ftctl.api; the deployer serves through plain llama_cpp.server processes (no pm2),
so canary, promote, rollback and history here are the core's, the same as for pm2.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket

import pytest
from ruamel.yaml import YAML

from tests.conftest import need, run_ftctl, run_json

pytestmark = pytest.mark.integration
EXAMPLES = ("ftctl_example_trainer", "ftctl_example_exporter", "ftctl_example_deployer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def example_ws(workspace, smollm2_base):
    need(all(importlib.util.find_spec(m) for m in EXAMPLES), "the example plugins (make install)")
    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["sources"] = [{"name": "events", "kind": "jsonl", "path": "feedback.jsonl"}]
    cfg["curate"] = {"split": {"val": 0.1, "test": 0.1}}
    cfg["train"] = {"trainer": "zero_lora", "zero_lora": {"r": 2}}
    cfg["export"] = {"exporter": "base_gguf"}
    cfg["deploy"] = {"deployer": "llama_server",
                     "llama_server": {"stable_port": free_port(), "canary_port": free_port(), "n_ctx": 256}}
    with open(workspace.config_path, "w") as f:
        y.dump(cfg, f)
    with open(workspace.root / "feedback.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"conversation_id": f"c{i}", "prompt": f"What is {i} plus {i}?",
                                "response": f"{2 * i}.", "rating": 5}) + "\n")
    yield workspace
    state = workspace.root / ".ftctl/llama-server/assistant.json"  # stop the servers the test started
    if state.is_file():
        for entry in json.loads(state.read_text()).values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry["pid"], signal.SIGKILL)


def served(status: dict) -> list[tuple]:
    return [(a["role"], a["version"], a["healthy"], a["served_id"]) for a in status["apps"]]


def test_example_plugins_drive_the_loop_through_the_cli(example_ws):
    root = example_ws.root
    plugins = {(r["kind"], r["name"]): r["distribution"] for r in run_json("plugins", cwd=root)}
    assert plugins[("trainer", "zero_lora")] == "ftctl-example-trainer"
    assert plugins[("exporter", "base_gguf")] == "ftctl-example-exporter"
    assert plugins[("deployer", "llama_server")] == "ftctl-example-deployer"

    assert run_json("collect", cwd=root)["kept"] == 40
    for version in ("v1.0", "v1.1"):
        assert run_json("train", cwd=root)["version"] == version
        files = run_json("export", version, cwd=root)["files"]
        assert [(f["kind"], f["quant"]) for f in files] == [("gguf", "BASE"), ("peft-adapter", None)]
    assert run_json("export", "v1.1", cwd=root)["skipped"]  # the exporter named its files: nothing to redo

    run_json("deploy", "v1.0", cwd=root)
    out = run_json("deploy", "v1.1", "--canary", "20", cwd=root)
    assert served(out) == [("stable", "v1.0", True, "assistant@v1.0"), ("canary", "v1.1", True, "assistant@v1.1")]
    out = run_json("rollback", cwd=root)  # drops the canary
    assert out["canary"] is None and served(out) == [("stable", "v1.0", True, "assistant@v1.0")]

    run_json("deploy", "v1.1", cwd=root)
    out = run_json("rollback", cwd=root)  # back to the previous stable
    assert out["stable"] == "v1.0" and served(out) == [("stable", "v1.0", True, "assistant@v1.0")]
    assert [h["action"] for h in out["history"]] == ["deploy", "canary", "rollback", "deploy", "rollback"]

    bad = run_ftctl("export", "v1.0", "--quant", "Q4_K_M", "--force", cwd=root)  # what this exporter cannot do
    assert bad.returncode == 2 and "writes the base GGUF only" in bad.stderr
    assert run_json("status", cwd=root)["stable"] == "v1.0"  # and nothing changed
