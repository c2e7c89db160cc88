"""QLoRA for real, on bitsandbytes' CPU backend: the 4-bit base trains, its adapter records how
the base was loaded, and the export merges into that base dequantized (tiny base here; the real
SmolLM2 through the CLI, export and parity in test_qlora_smollm2.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.train.conftest import configure

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="bitsandbytes (pip install 'ftctl[qlora]')")

QUANT = {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}


def train(ws, **kw):
    from ftctl.train import train as do_train

    lines = []
    with ws.run_lock("train"):
        return do_train(ws, log=lines.append, **kw), lines


def test_qlora_true_trains_the_4bit_base_with_checkpointing(train_ws, tiny_base):
    configure(train_ws, tiny_base, qlora=True, max_steps=3)
    r, lines = train(train_ws)
    entry = train_ws.read_lock().state("assistant").versions[r["version"]]
    t = entry.training
    assert t["base_quantization"] == QUANT
    assert t["params"]["qlora"] and t["params"]["gradient_checkpointing"] is True  # on by default under QLoRA
    assert t["params"]["device"] == "cpu" and t["params"]["weights"] == "float32"
    assert t["libraries"]["bitsandbytes"].startswith("0.50")
    assert any("4-bit NF4 (QLoRA)" in line and "gradient checkpointing" in line for line in lines)
    assert entry.metrics["last_loss"] == entry.metrics["last_loss"]  # finite, not NaN
    cfg = json.loads((train_ws.root / r["adapter"] / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_an_evaluation_mid_run_does_not_stop_the_4bit_layers_training(train_ws, tiny_base):
    """bitsandbytes' CPU inference kernel (AVX-512 BF16) repacks 4-bit weights on an eval forward
    and has no backward; the run keeps them off it (and a 32-wide base, not whole blocks of 64,
    trains at all)."""
    from safetensors.torch import load_file

    configure(train_ws, tiny_base, qlora=True, max_steps=4, eval_every=2, early_stopping=5, checkpoint_every=2,
              learning_rate=5e-3)
    r, _ = train(train_ws)
    entry = train_ws.read_lock().state("assistant").versions["v1.0"]
    assert r["steps"] == 4 and r["val_loss"] is not None  # evaluated at step 2, trained on to step 4
    run = train_ws.state_dir / "runs" / "assistant" / entry.training["run"]
    history = json.loads((run / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h][:1] == [2]
    assert all(h["loss"] == h["loss"] for h in history if "loss" in h)  # finite after it too


def test_the_merge_dequantizes_the_4bit_base(smollm2_base, tmp_path):
    """The merged model is the function that was trained: NF4's rounding is in its weights."""
    import torch

    from ftctl.lib.basemodel import dequantize, load_model, resolve_base
    from tests.fixtures_models import make_tiny

    # 64 wide: rows in whole NF4 blocks (bitsandbytes' CPU backend rounds a 32-wide matrix ~4x coarser)
    base = resolve_base(str(make_tiny(tmp_path / "tiny64", smollm2_base.path, hidden_size=64,
                                      intermediate_size=128)))
    full = load_model(base)
    deq = dequantize(load_model(base, quantization=QUANT), torch.float32)
    w_full = full.model.layers[0].self_attn.q_proj.weight
    w_deq = deq.model.layers[0].self_attn.q_proj.weight
    assert type(deq.model.layers[0].self_attn.q_proj) is torch.nn.Linear and w_deq.dtype == torch.float32
    assert not torch.equal(w_full, w_deq)  # NF4 rounding
    # ... and nothing else: NF4's widest gap between levels is 0.28 of a block's absmax
    error = (w_full - w_deq).detach().abs()
    assert float(error.max()) <= 0.2 * float(w_full.detach().abs().max()) and float(error.mean()) < 0.01
    assert torch.equal(full.model.embed_tokens.weight, deq.model.embed_tokens.weight)  # never quantized


def test_a_4bit_cpu_load_lets_go_of_the_checkpoint_file(smollm2_base, tmp_path):
    """The full-precision tensors of a 4-bit load (embeddings, norms) are copied out of the mapped
    safetensors file, so the file is unmapped: its pages (every one bitsandbytes read while
    quantizing) no longer count in the run's memory. Same values, tied weights still tied."""
    import torch

    from ftctl.lib.basemodel import load_model, resolve_base
    from tests.fixtures_models import make_tiny

    base = resolve_base(str(make_tiny(tmp_path / "tiny64", smollm2_base.path, hidden_size=64,
                                      intermediate_size=128)))
    checkpoints = [str(p) for p in base.path.glob("*.safetensors")]
    assert checkpoints

    def mapped() -> set[str]:
        with open("/proc/self/maps") as f:
            lines = [line.rstrip() for line in f]
        return {c for c in checkpoints for line in lines if line.endswith(c)}

    full = load_model(base)
    assert mapped()  # a full-precision load's weights are the mapped file itself (left alone)
    q = load_model(base, quantization=QUANT)
    del full
    import gc

    gc.collect()
    assert not mapped()
    assert torch.equal(q.model.embed_tokens.weight, load_model(base).model.embed_tokens.weight)
    assert q.lm_head.weight is q.model.embed_tokens.weight or not q.config.tie_word_embeddings


CHURN = """
import contextlib, ctypes, sys
from ftctl.lib.basemodel import returning_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) * 1024
libc.free(libc.malloc(30 << 20))  # a big tensor freed: glibc's mmap threshold climbs to 30 MB
before = rss()
with returning_freed_memory() if sys.argv[1] == "on" else contextlib.nullcontext():
    blocks, kept = [], []
    for _ in range(32):  # each weight read in full precision, then its 4-bit copy (an 8th) made
        blocks.append(libc.malloc(4 << 20))
        libc.memset(blocks[-1], 1, 4 << 20)
        kept.append(libc.malloc(512 << 10))
        libc.memset(kept[-1], 1, 512 << 10)
    for b in blocks:
        libc.free(b)
print(rss() - before - (16 << 20))  # less the 4-bit copies
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
def test_a_4bit_cpu_load_gives_freed_weights_back(tmp_path):
    """The full-precision temporaries a 4-bit load frees leave the process (they did not: glibc kept
    them as heap fragments, 0-470 MB of SmolLM2's load)."""
    import subprocess
    import sys

    def grown(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert grown("off") > 100 * 2**20  # the 128 MB freed stay resident without it
    assert grown("on") < 16 * 2**20
