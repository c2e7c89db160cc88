"""Memory you can plan (ftctl.lib.memory): predicted from a config on the meta device, no weights.

The 7B/8B-shaped configs in tests/fixtures have no weights at all, so a prediction that loaded
any would fail. How close the predictions come to measured peaks: benchmarks/memory.py
(docs/train.md has the table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftctl.errors import UsageError
from ftctl.lib.device import Capability, card
from ftctl.lib.basemodel import ResolvedBase
from tests.conftest import run_ftctl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GIB = 2**30


def trainer(tmp_path, **cfg):
    from ftctl.kinds import Context
    from ftctl_plugins.trainers.lora import LoraConfig, LoraTrainer

    return LoraTrainer(LoraConfig(**{"max_length": 1024, **cfg}), Context(tmp_path, "m", tmp_path, log=lambda _m: None))


def shaped(name: str) -> ResolvedBase:
    assert not list((FIXTURES / name).glob("*.safetensors"))  # a config, nothing else
    return ResolvedBase(name, FIXTURES / name, "", None, False)


@pytest.mark.parametrize("name", ["mistral-7b", "llama-3-8b"])
def test_a_7b_model_on_24_and_12_gb_cards(tmp_path, name):
    base = shaped(name)
    qlora = {g: trainer(tmp_path, qlora=True).memory(base, card(g)) for g in (24, 12)}
    lora_bf16 = trainer(tmp_path).memory(base, card(24))
    lora_fp32 = trainer(tmp_path, precision="fp32").memory(base, card(24))
    # QLoRA (checkpointing on by default) fits the 24 GB and the 12 GB card; 16-bit LoRA without
    # checkpointing does not fit 24 GB, fp32 weights alone are ~28 GB
    assert qlora[24].fits and qlora[12].fits, qlora[12].parts
    assert not lora_bf16.fits and not lora_fp32.fits
    assert lora_fp32.parts["weights"] > 26 * GIB and 13 * GIB < lora_bf16.parts["weights"] < 16 * GIB
    assert 3.5 * GIB < qlora[24].parts["weights"] < 8 * GIB  # 4-bit linears, float32 embeddings
    assert qlora[24].total < lora_bf16.total < lora_fp32.total
    assert "gradient checkpointing" in qlora[24].notes
    assert qlora[24].adapter_params == 41_943_040  # r=16 on every linear layer of 32 layers


def test_checkpointing_and_length_move_the_activations(tmp_path):
    base = shaped("mistral-7b")
    plain = trainer(tmp_path).memory(base, card(24))
    ckpt = trainer(tmp_path, gradient_checkpointing=True).memory(base, card(24))
    short = trainer(tmp_path, gradient_checkpointing=True, max_length=256).memory(base, card(24))
    assert ckpt.parts["activations"] * 5 < plain.parts["activations"]
    assert short.parts["activations"] < ckpt.parts["activations"] / 3
    assert ckpt.parts["weights"] == plain.parts["weights"]
    assert ckpt.fits  # bf16 LoRA with checkpointing fits a 24 GB card
    assert not trainer(tmp_path, gradient_checkpointing=True).memory(base, card(12)).fits


def test_train_stops_before_loading_when_the_run_cannot_fit(train_ws, monkeypatch):
    import ftctl.lib.basemodel
    import ftctl_plugins.trainers.lora as lora
    from ftctl.train import train

    monkeypatch.setattr(lora, "probe_devices", lambda: Capability((), 200 * 2**20))  # a 200 MB machine
    real_load = ftctl.lib.basemodel.load_model

    def boom(*a, **k):
        raise AssertionError("no weights may load")

    monkeypatch.setattr(lora, "load_model", boom)
    with train_ws.run_lock("train"), pytest.raises(UsageError) as e:
        train(train_ws, log=lambda _m: None)
    assert "predicted to need" in e.value.message and "cpu has 0.2 GiB" in e.value.message
    assert "weights" in e.value.message and "activations" in e.value.message
    assert "max_length" in e.value.hint and "--force" in e.value.hint
    assert not train_ws.read_lock().state("assistant").versions

    monkeypatch.setattr(lora, "load_model", real_load)
    lines = []
    with train_ws.run_lock("train"):
        r = train(train_ws, log=lines.append, force=True)
    assert r["version"] == "v1.0" and any("training anyway (--force)" in line for line in lines)


def test_preview_shows_the_prediction_for_this_machine_and_two_cards(train_ws):
    proc = run_ftctl("train", "--preview", cwd=train_ws.root, check=True)
    assert "predicted peak memory" in proc.stdout
    assert "24 GB GPU" in proc.stdout and "12 GB GPU" in proc.stdout and "cpu" in proc.stdout
    assert "fits" in proc.stdout and "weights" in proc.stdout


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
def test_the_cpu_runtime_is_this_machines_libraries_measured(tmp_path, monkeypatch):
    """On the CPU the libraries' part is measured in the predicting process (their size differs
    between machines with the same pins), not a constant: it follows what the process holds."""
    from ftctl.lib import memory

    t = trainer(tmp_path, precision="fp32", max_length=64)
    if t.device().is_cuda:
        pytest.skip("predicts for the CPU")
    libraries = memory.cpu_libraries()
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) * 1024
    assert abs(libraries - rss) < 64 * 2**20  # this process, torch, transformers and peft in it
    base = shaped("mistral-7b")
    monkeypatch.setattr(memory, "cpu_libraries", lambda: libraries)
    before = t.memory(base)
    monkeypatch.setattr(memory, "cpu_libraries", lambda: libraries + GIB)
    after = t.memory(base)
    assert after.parts["runtime"] - before.parts["runtime"] == GIB
    assert after.parts["weights"] == before.parts["weights"]


def test_cpu_bf16_autocast_counts_what_autocast_keeps(tmp_path):
    """Under bf16 autocast on the CPU the matmuls keep their inputs in bf16 and the trainer stores
    the frozen linear weights in bf16 (lean.py). Autocast does not reach meta tensors, so the
    prediction applies its casts itself: counted in float32 it ran 20-23% over the measured peak of
    SmolLM2-135M with a partial checkpointing share (benchmarks/memory.py's bf16 row)."""
    from ftctl.lib.device import Device

    base = shaped("mistral-7b")
    cpu = Device("cpu", None, 64 * GIB, "CPU")
    fp32, bf16 = (trainer(tmp_path, precision=p, max_length=256, gradient_checkpointing=0.5) for p in ("fp32", "bf16"))
    assert bf16.shape(cpu).autocast == "bfloat16" and fp32.shape(cpu).autocast is None
    assert bf16.shape(card(24)).autocast is None  # on CUDA the weights load in bf16 already
    full, mixed = fp32.memory(base, cpu), bf16.memory(base, cpu)
    # the linear layers' weights in bf16; the embeddings, the output layer and the norms in float32
    float32 = (32000 * 4096 * 2 + 4096 * (2 * 32 + 1)) * 4
    assert mixed.parts["weights"] == (full.parts["weights"] + float32) // 2
    # the matmuls' saved inputs in bf16; the residual stream, the norms' and the loss's float32
    assert 0.55 * full.parts["activations"] < mixed.parts["activations"] < 0.8 * full.parts["activations"]
    assert mixed.adapter_params == full.adapter_params


def test_the_cpu_default_checkpoints_the_fewest_layers_that_fit(tmp_path, monkeypatch):
    """Unset on the CPU, the checkpointing share comes from the memory plan: the fewest of the
    first layers, at least 60%, whose predicted peak fits in 80% of the RAM; all where none does.
    A setting (true, false, a share) wins without any prediction; a share outside 0..1 is an error."""
    import json

    import torch

    import ftctl_plugins.trainers.lora as lora
    from ftctl import plugins
    from ftctl.errors import ConfigError
    from ftctl.kinds import Context
    from ftctl.lib import memory
    from ftctl.lib.device import Device

    # Mistral's architecture, small enough to predict quickly: 10 layers
    config = json.loads((FIXTURES / "mistral-7b" / "config.json").read_text())
    config.update(hidden_size=256, intermediate_size=512, num_hidden_layers=10, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64)
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "config.json").write_text(json.dumps(config))
    base = ResolvedBase("small", tmp_path / "small", "", None, False)
    small = {"precision": "fp32", "max_length": 256}  # fp32 whatever this CPU's bf16
    monkeypatch.setattr(memory, "cpu_libraries", lambda: GIB)  # measured: it grows as the process runs

    def ram(n_bytes):
        return Device("cpu", None, int(n_bytes), "CPU")

    huge = ram(1000 * GIB)
    peak = {n: trainer(tmp_path, **small, gradient_checkpointing=n / 10).memory(base, huge).total for n in (7, 8)}
    assert peak[7] > peak[8]

    t = trainer(tmp_path, **small)
    rng = torch.random.get_rng_state()
    assert t.checkpointing(huge, base) == 0.6  # the floor: 6 of 10 layers
    assert torch.equal(torch.random.get_rng_state(), rng)  # planned in a seeded run: its draws stay as they were
    est = t.memory(base, huge)
    assert "gradient checkpointing (6 of 10 layers)" in est.notes and est.fits
    assert t.checkpointing(ram(0), base) == 0.6  # the RAM unknown: the floor
    tight = ram(peak[8] / lora.CPU_ROOM + 1)  # 8 layers fit in 80% of it, 7 do not
    assert t.checkpointing(tight, base) == 0.8
    assert t.memory(base, tight).total == peak[8]
    est = t.memory(base, ram(GIB))  # not even all layers fit: all layers, and it says so
    assert "gradient checkpointing" in est.notes and not est.fits
    assert t.checkpointing(Device("cpu"), None) == lora.CPU_CHECKPOINTING  # nothing to plan from

    def no_plan(*a, **k):
        raise AssertionError("a setting needs no plan")

    monkeypatch.setattr(lora, "least_checkpointing", no_plan)
    for setting, share in ((True, 1.0), (False, 0.0), (0.3, 0.3), ("0.75", 0.75)):
        assert trainer(tmp_path, **small, gradient_checkpointing=setting).checkpointing(tight, base) == share
    assert trainer(tmp_path, qlora=True).checkpointing(tight, base) == 1.0
    assert trainer(tmp_path).checkpointing(card(24), base) == 0.0  # a GPU: none unless set
    for bad in (1.5, -0.1, "half", "nan", [0.5]):
        with pytest.raises(ConfigError) as e:
            plugins.build("trainer", "lora", {"gradient_checkpointing": bad}, Context(tmp_path, "m", tmp_path),
                          key="train.lora")
        assert "train.lora.gradient_checkpointing" in e.value.message
        assert "a number between 0 and 1" in e.value.message
