"""The real SmolLM2-135M-Instruct through QLoRA on bitsandbytes' CPU backend, as a user runs it:
`ftctl train --use-qlora`, the loss falls; `ftctl export` dequantizes the 4-bit base, merges,
converts to GGUF and the files pass parity against the merged model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import need, run_ftctl
from tests.export.conftest import have_converters, have_llama_cpp
from tests.fixtures_models import chat
from tests.train.conftest import configure, write_jsonl
from tests.train.test_smollm2 import ANSWER, QUESTIONS

# the 4-bit steps on 2 cores (quantizing the base at load, dequantizing in every step): minutes
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]
NOISE = ("kernels-community", "is_gradient_checkpointing", "gradient_checkpointing_enable", "FutureWarning",
         "Loading weights", "dequantized in")


def test_smollm2_qlora_learns_exports_and_passes_parity(workspace, smollm2_base):
    need(importlib.util.find_spec("bitsandbytes") is not None, "bitsandbytes (pip install 'ftctl[qlora]')")
    need(have_llama_cpp() and have_converters(), "llama.cpp (pip install 'ftctl[export]', scripts/fetch_llama_cpp_tools.py)")
    configure(workspace, "smollm2-135m-instruct", max_steps=4, batch_size=1, max_length=64, learning_rate=2e-3,
              r=16, alpha=32, checkpoint_every=100, precision="auto")
    data = workspace.data_dir("assistant")
    write_jsonl(data / "train.jsonl", [chat(q, ANSWER) for q in QUESTIONS] * 2)
    write_jsonl(data / "val.jsonl", [chat("Remind me of the blue team's password.", ANSWER)])

    proc = run_ftctl("--json", "train", "--use-qlora", cwd=workspace.root, check=True, timeout=2400)
    r = json.loads(proc.stdout)
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr  # the libraries' noise is filtered
    assert "4-bit NF4 (QLoRA)" in proc.stderr
    entry = workspace.read_lock().state("assistant").versions[r["version"]]
    assert entry.training["base_quantization"]["bits"] == 4 and entry.training["params"]["gradient_checkpointing"]
    run = workspace.state_dir / "runs" / "assistant" / entry.training["run"]
    curve = [round(h["loss"], 3) for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]
    print(f"QLoRA loss curve: {curve}; peak RSS {r['peak_rss_mb']} MB")
    assert len(curve) == 4 and curve[-1] < curve[0] / 2, curve  # it learned

    proc = run_ftctl("--json", "export", r["version"], "--gguf", "--quant", "F16,Q8_0", cwd=workspace.root,
                     check=True, timeout=2400)
    out = json.loads(proc.stdout)
    assert "dequantizing the 4-bit (NF4) base to float32" in proc.stderr
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr
    parity = {f["quant"]: f["parity"] for f in out["files"] if f["kind"] == "gguf"}
    print("QLoRA parity: " + json.dumps({q: {k: p[k] for k in ("top1", "kl_mean")} for q, p in parity.items()}))
    assert parity["F16"]["top1"] >= 0.99 and parity["Q8_0"]["top1"] >= 0.95
    for p in parity.values():  # every file passed against the base's figures for its type
        assert p["top1"] >= p["limits"]["min_top1"] and p["kl_mean"] <= p["limits"]["max_kl"]
