"""Preflight, quant names, the Modelfile template and the converter lookup: logic, in seconds."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import ExternalToolError, UsageError
from ftctl.lib.llamacpp import preflight, supported_architectures


@pytest.fixture
def llama_cpp_dir(tmp_path):
    d = tmp_path / "llama.cpp"
    (d / "conversion").mkdir(parents=True)
    (d / "convert_hf_to_gguf.py").write_text("# converter\n")
    (d / "conversion" / "llama.py").write_text(
        '@ModelBase.register(\n    "LlamaForCausalLM", "MistralForCausalLM")\nclass LlamaModel: ...\n')
    return d


def base_dir(tmp_path, arch="LlamaForCausalLM", vocab_size=4, tokens=4):
    d = tmp_path / "base"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "vocab_size": vocab_size}))
    vocab = {f"t{i}": i for i in range(tokens - 1)}
    (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab},
                                                  "added_tokens": [{"id": tokens - 1, "content": "<eos>"}]}))
    return d


def adapter_dir(tmp_path, names):
    import numpy as np
    from safetensors.numpy import save_file

    d = tmp_path / "adapter"
    d.mkdir(parents=True)
    save_file({n: np.zeros((2, 2), dtype=np.float32) for n in names}, str(d / "adapter_model.safetensors"))
    return d


def test_supported_architectures_are_read_from_the_converter(llama_cpp_dir):
    assert supported_architectures(llama_cpp_dir) == {"LlamaForCausalLM", "MistralForCausalLM"}


def test_a_convertible_base_and_adapter_pass(tmp_path, llama_cpp_dir):
    adapter = adapter_dir(tmp_path, ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                                     "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])
    assert preflight(base_dir(tmp_path), adapter, lora_gguf=True, tools_root=llama_cpp_dir) == []


def test_unsupported_architecture(tmp_path, llama_cpp_dir):
    problems = preflight(base_dir(tmp_path, arch="FancyForCausalLM"), tools_root=llama_cpp_dir)
    assert problems == ["llama.cpp's converter does not support FancyForCausalLM"]


def test_tokenizer_larger_than_the_embedding(tmp_path, llama_cpp_dir):
    problems = preflight(base_dir(tmp_path, vocab_size=4, tokens=6), tools_root=llama_cpp_dir)
    assert problems == ["the tokenizer has 6 tokens but the embedding only 4 rows"]
    # a padded embedding (more rows than tokens) is normal and fine
    assert preflight(base_dir(tmp_path / "padded", vocab_size=64, tokens=6), tools_root=llama_cpp_dir) == []


@pytest.mark.parametrize("name", ["base_model.model.lm_head.weight",
                                  "base_model.model.model.embed_tokens.lora_embedding_A"])
def test_adapter_with_tensors_the_lora_converter_cannot_take(tmp_path, llama_cpp_dir, name):
    adapter = adapter_dir(tmp_path, [name])
    problems = preflight(base_dir(tmp_path), adapter, lora_gguf=True, tools_root=llama_cpp_dir)
    assert len(problems) == 1 and name in problems[0] and "export --gguf" in problems[0]
    # merged exports take such adapters: only the LoRA GGUF is refused
    assert preflight(base_dir(tmp_path / "b"), adapter, lora_gguf=False, tools_root=llama_cpp_dir) == []


def test_missing_converter_is_a_preflight_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    problems = preflight(base_dir(tmp_path))
    assert len(problems) == 1 and "fetch_llama_cpp_tools.py" in problems[0]


def test_quant_names():
    from ftctl_plugins.exporters.gguf import parse_quants

    assert parse_quants(["q8_0, Q4_K_M", "F16", "Q8_0"]) == ["Q8_0", "Q4_K_M", "F16"]
    with pytest.raises(UsageError, match="Q9"):
        parse_quants(["Q9"])


def test_find_tools_order(tmp_path, monkeypatch, llama_cpp_dir):
    from ftctl.lib.llamacpp import cache_dir, find_tools

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    cached = cache_dir()
    cached.mkdir(parents=True)
    (cached / "convert_hf_to_gguf.py").write_text("")
    assert find_tools().root == cached.resolve()
    assert find_tools(llama_cpp_dir).root == llama_cpp_dir.resolve()  # config beats the cache
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ExternalToolError, match="LLAMA_CPP_DIR"):
        find_tools(llama_cpp_dir)  # the environment beats config, and a wrong one is an error


def test_modelfile_template_renders_like_the_chat_template(smollm2_base, tmp_path):
    from transformers import AutoTokenizer

    from ftctl_plugins.exporters.modelfile import SAMPLES, go_render, template_pieces, write_modelfile

    tok = AutoTokenizer.from_pretrained(smollm2_base.path)
    pieces = template_pieces(tok)
    for sample in SAMPLES:
        assert go_render(pieces, sample) == tok.apply_chat_template(sample, tokenize=False, add_generation_prompt=True)
    text = write_modelfile(tmp_path / "m-v1.0-Q8_0.gguf", tok).read_text()
    assert "FROM ./m-v1.0-Q8_0.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'if ne (index .Messages 0).Role "system"' in text  # SmolLM2's default system prompt
    # a template the translation cannot reproduce: no TEMPLATE line (Ollama reads the GGUF's)
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    assert "TEMPLATE" not in write_modelfile(tmp_path / "x.gguf", tok).read_text()
