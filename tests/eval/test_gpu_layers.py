"""eval.n_gpu_layers and `chat --n-gpu-layers` reach llama.cpp (llama-cpp-python's Llama and
xllamacpp's Server stand in here: what is checked is the value they get, on a CPU build of
llama.cpp as on a GPU one)."""

from __future__ import annotations

import struct

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
xllamacpp = pytest.importorskip("xllamacpp")


@pytest.fixture
def llama_kwargs(monkeypatch):
    seen: dict = {}

    class Llama:
        def __init__(self, **kw):
            seen.update(kw)

    class Server:  # llama-server, which the GGUF backend decodes with
        def __init__(self, params):
            seen["n_gpu_layers"] = params.n_gpu_layers

    monkeypatch.setattr(llama_cpp, "Llama", Llama)
    monkeypatch.setattr(xllamacpp, "Server", Server)
    return seen


def test_gpu_layers_default_to_what_the_build_can_offload(tmp_path, llama_kwargs):
    from ftctl.lib.generation import GGUFBackend
    from ftctl.lib.llamacpp import open_llama

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))  # a header with no tensors: nothing to decode
    open_llama(f)
    assert llama_kwargs["n_gpu_layers"] == (-1 if llama_cpp.llama_supports_gpu_offload() else 0)
    GGUFBackend(f, n_gpu_layers=7)
    assert llama_kwargs["n_gpu_layers"] == 7


def test_eval_config_and_the_chat_flag_reach_the_backend(workspace, tmp_path, llama_kwargs):
    from ruamel.yaml import YAML

    from ftctl.eval.predict import open_backend
    from ftctl.eval.target import Target

    y = YAML(typ="safe", pure=True)
    cfg = y.load(workspace.config_path.read_text())
    cfg["eval"] = {"n_gpu_layers": 5}
    with open(workspace.config_path, "w") as fh:
        y.dump(cfg, fh)
    workspace.__dict__.pop("loaded", None)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))  # a header with no tensors: nothing to decode
    target = Target("assistant", "v1.0", "gguf:Q8_0", "base", gguf=f)
    open_backend(workspace, target)
    assert llama_kwargs["n_gpu_layers"] == 5  # eval.n_gpu_layers
    open_backend(workspace, target, n_gpu_layers=-1)
    assert llama_kwargs["n_gpu_layers"] == -1  # `ftctl chat --n-gpu-layers -1` wins
