"""Which exported file a deploy serves: the kind the app's argument takes, the configured quant."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from ftctl.deploy import rollout as deploy
from ftctl.errors import UsageError
from tests.deploy.conftest import add_versions, write_yaml


def configure(ws, **pm2):
    data = YAML(typ="safe", pure=True).load(ws.config_path.read_text())
    data.setdefault("deploy", {})["pm2"] = {"ecosystem": "eco.json", "app": "a", **pm2}
    write_yaml(ws.config_path, data)
    from ftctl.registry.workspace import Workspace

    return Workspace(ws.root)


def test_lora_apps_get_the_lora_gguf_others_the_model_gguf(deploy_workspace):
    ws = deploy_workspace
    d = ws.export_dir("assistant", "v1.0")
    d.mkdir(parents=True)
    (d / "model-q8_0.gguf").write_bytes(b"GGUF merged")
    (d / "adapter.gguf").write_bytes(b"GGUF lora")
    add_versions(ws, "assistant", {"v1.0": d / "model-q8_0.gguf"})
    with ws.run_lock("test"):
        ws.record("test: lora export", lambda lk: lk.state("assistant").versions["v1.0"].exports.append(
            {"path": ws.rel(d / "adapter.gguf"), "kind": "lora-gguf", "quant": "F16", "sha256": None}))

    art = deploy.artifact(ws, "assistant", "v1.0", deploy.deployer(configure(ws, arg="--lora"), "assistant", print))
    assert art.kind == "lora-gguf" and art.path.name == "adapter.gguf"
    art = deploy.artifact(ws, "assistant", "v1.0", deploy.deployer(configure(ws), "assistant", print))
    assert art.kind == "gguf" and art.path.name == "model-q8_0.gguf" and len(art.sha256) == 64


def test_configured_quant_and_a_file_changed_since_export(deploy_workspace):
    ws = deploy_workspace
    f = ws.export_dir("assistant", "v1.0") / "model.gguf"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"GGUF merged")
    add_versions(ws, "assistant", {"v1.0": f})  # recorded as Q4_1
    ws = configure(ws, quant="q4_1")
    assert deploy.artifact(ws, "assistant", "v1.0", deploy.deployer(ws, "assistant", print)).quant == "Q4_1"
    ws = configure(ws, quant="Q8_0")
    with pytest.raises(UsageError, match=r"no exported gguf \(Q8_0\)") as e:
        deploy.artifact(ws, "assistant", "v1.0", deploy.deployer(ws, "assistant", print))
    assert "ftctl export" in e.value.hint
    f.write_bytes(b"GGUF changed after export")
    ws = configure(ws, quant=None)
    with pytest.raises(UsageError, match="does not match the sha256"):
        deploy.artifact(ws, "assistant", "v1.0", deploy.deployer(ws, "assistant", print))
