"""Eval fixtures: a tiny random Llama (SmolLM2's tokenizer and chat template), LoRA versions, eval sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.registry.lockfile import VersionEntry
from ftctl.lib.times import now
from ftctl.registry.workspace import Workspace

QA = [
    ("What is the capital of France?", "Paris is the capital of France.", "support", "chat"),
    ("How many legs does a spider have?", "A spider has eight legs.", "support", "chat"),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day.", "sales", "docs"),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet.", "sales", "docs"),
    ("What is two plus two?", "Two plus two is four.", "support", "chat"),
    ("What do bees make?", "Bees make honey.", "sales", "docs"),
]


def example(prompt, answer=None, agent=None, source="chat", meta=None, i=0):
    msgs = [{"role": "user", "content": prompt}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return {"messages": msgs, "source": source, "source_id": str(i), "agent": agent, "meta": meta or {}}


def write_set(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_eval_base(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer: generation logic in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftctl.lib.basemodel import load_tokenizer, resolve_base

    tok = load_tokenizer(resolve_base("smollm2-135m-instruct"))  # cached conversion after the first run
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so the version really differs from base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out, safe_serialization=True)
    return out


def add_version(ws: Workspace, version: str, *, adapter: Path | None = None, exports=(), model="assistant"):
    add_versions(ws, {version: (adapter, exports)}, model)


def add_versions(ws: Workspace, versions: dict, model="assistant"):
    """Record versions {name: (adapter dir or None, exports)} in one commit, as training would."""
    def update(lock):
        for version, (adapter, exports) in versions.items():
            lock.state(model).versions[version] = VersionEntry(
                version=version, created=now(), base={"ref": ws.model(model).base},
                adapter={"path": ws.rel(adapter)} if adapter else {}, exports=list(exports))

    with ws.run_lock("test"):
        ws.record(f"test: add {model} {', '.join(versions)}", update)


@pytest.fixture
def eval_ws(tmp_path, tiny_eval_base) -> Workspace:
    """A workspace on the tiny base with two adapter versions (v1.0, v1.1) and a QA eval set."""
    from ftctl.registry.init import init

    init(tmp_path / "ws", model="assistant", base=str(tiny_eval_base))
    ws = Workspace(tmp_path / "ws", overrides=("eval.max_new_tokens=12", "eval.bootstrap=500"))
    add_versions(ws, {v: (make_adapter(tiny_eval_base, ws.adapter_dir("assistant", v), seed), ())
                      for v, seed in (("v1.0", 1), ("v1.1", 2))})
    write_set(ws.root / "qa.jsonl", [example(q, a, agent, src, i=i) for i, (q, a, agent, src) in enumerate(QA)])
    return ws
