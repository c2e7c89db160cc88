"""Export fixtures: LoRA adapters on the shared `tiny_base` (a random Llama with the real SmolLM2
tokenizer, which llama.cpp's converter knows) and versions recorded in a workspace."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from ftctl.registry.lockfile import VersionEntry
from ftctl.lib.times import now
from tests.conftest import need


def have_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def have_converters() -> bool:
    from ftctl.lib.llamacpp import find_tools
    from ftctl.errors import FtctlError

    try:
        find_tools(need=("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"))
        return True
    except FtctlError:
        return False


@pytest.fixture
def real_tools():
    need(have_llama_cpp(), "llama-cpp-python (pip install 'ftctl[export]')")
    need(have_converters(), "llama.cpp converters (python scripts/fetch_llama_cpp_tools.py)")


def make_adapter(base_dir: Path, out: Path, *, targets=("q_proj", "v_proj"), seed=1, **extra) -> Path:
    """A LoRA adapter with random (non-zero) B, so merging it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                           init_lora_weights=False, task_type="CAUSAL_LM", **extra))
    peft.save_pretrained(out)
    return out


def record_version(ws, base_ref: str, adapter_src: Path | None, model: str = "assistant") -> str:
    """Store an adapter and record a version as `ftctl train` does (lock entry + DVC + tag)."""
    from ftctl.registry.versions import next_version

    version = next_version(ws.read_lock(), model)
    d = ws.adapter_dir(model, version)
    track = []
    if adapter_src is not None:
        shutil.copytree(adapter_src, d)
        track = [d]

    def update(lock):
        lock.state(model).versions[version] = VersionEntry(
            version=version, created=now(), base={"ref": base_ref},
            adapter={"path": ws.rel(d)} if adapter_src is not None else {})

    with ws.run_lock("test"):
        ws.record(f"train {model} {version}", update, track=track, tag=(model, version))
    return version


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_base) -> Path:
    return make_adapter(tiny_base, tmp_path_factory.mktemp("adapter") / "a")


@pytest.fixture(scope="module")
def export_ws(tmp_path_factory, tiny_base, tiny_adapter):
    """One workspace per module (git + DVC setup is slow): v1.0 has an adapter, v1.1 has none.
    Tests of failures share it, since each asserts that it changed nothing."""
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    root = tmp_path_factory.mktemp("export-ws") / "ws"
    init(root, model="assistant")
    ws = Workspace(root)
    return ws, record_version(ws, str(tiny_base), tiny_adapter), record_version(ws, str(tiny_base), None)


@pytest.fixture
def tiny_version(export_ws):
    ws, version, _ = export_ws
    return ws, version
