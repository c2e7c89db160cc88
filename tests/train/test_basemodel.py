"""Resolving base refs: catalogue name, HF directory, GGUF file; bad refs are clear errors."""

from __future__ import annotations

import time

import pytest

from ftctl.lib.basemodel import BaseModelError, cache_root, resolve_base


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(BaseModelError) as e:
        resolve_base(str(tmp_path / "nope"))
    assert "not found" in e.value.message and "smollm2-135m-instruct" in e.value.hint


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BaseModelError) as e:
        resolve_base(str(tmp_path))
    assert "config.json" in e.value.message


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(BaseModelError) as e:
        resolve_base(str(fake))
    assert "not a GGUF file" in e.value.message


def test_hf_dir_hash_is_stable_and_content_sensitive(tiny_base, tmp_path):
    import shutil

    a = resolve_base(str(tiny_base))
    assert a.path == tiny_base.resolve() and a.source_file is None
    assert resolve_base(str(tiny_base)).sha256 == a.sha256
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base, copy)
    assert resolve_base(str(copy)).sha256 == a.sha256  # content, not location
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("2048", "4096"))
    assert resolve_base(str(copy)).sha256 != a.sha256


def test_relative_paths_resolve_against_the_workspace(tiny_base):
    r = resolve_base(tiny_base.name, root=tiny_base.parent)
    assert r.path == tiny_base.resolve()


def test_default_gguf_base_is_converted_once_and_cached(smollm2_base):
    """The GGUF is dequantized into <cache>/<sha256>/ (safetensors + tokenizer + template)."""
    assert smollm2_base.source_file.suffix == ".gguf"
    assert smollm2_base.path == cache_root() / smollm2_base.sha256
    assert (smollm2_base.path / "model.safetensors").is_file()
    assert (smollm2_base.path / "tokenizer.json").is_file()
    assert not list(smollm2_base.path.glob("*.bin"))  # no pickles
    t = time.monotonic()
    again = resolve_base("smollm2-135m-instruct")
    assert again.path == smollm2_base.path and time.monotonic() - t < 10  # hash only, no conversion


def test_cache_respects_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "ftctl" / "bases"


def test_loaders_load_the_converted_base(smollm2_base):
    from ftctl.lib.basemodel import load_model, load_tokenizer

    tok = load_tokenizer(smollm2_base)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = load_model(smollm2_base)
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 100e6
