"""Device and dtype decisions, on a CPU-only machine, with made-up GPUs (ftctl.lib.device).

The CUDA paths are written for real; what they decide is tested here on capabilities a test
describes, and on the CPU it is the real machine that answers."""

from __future__ import annotations

import pytest

from ftctl.errors import UsageError
from ftctl.lib.device import Capability, Device, Gpu, card, check_spec, gpu_layers, load_dtype, resolve

CPU_ONLY = Capability((), 24 * 2**30)
ONE_3090 = Capability((Gpu("RTX 3090", 24 * 2**30, bf16=True),), 64 * 2**30)
TWO_GPUS = Capability((Gpu("RTX 3090", 24 * 2**30, True), Gpu("Tesla T4", 16 * 2**30, False)), 64 * 2**30)


@pytest.mark.parametrize("spec,cap,expected", [
    ("auto", CPU_ONLY, "cpu"),
    ("auto", ONE_3090, "cuda:0"),
    ("cpu", ONE_3090, "cpu"),
    ("cuda", ONE_3090, "cuda:0"),
    ("cuda:1", TWO_GPUS, "cuda:1"),
    (1, TWO_GPUS, "cuda:1"),
    ("0", ONE_3090, "cuda:0"),
    (None, CPU_ONLY, "cpu"),
])
def test_the_device_comes_from_the_config(spec, cap, expected):
    d = resolve(spec, cap)
    assert str(d) == expected
    assert d.device_map == ({"": d.index} if d.is_cuda else {"": "cpu"})


def test_a_device_that_does_not_exist_is_a_clear_error():
    with pytest.raises(UsageError) as e:
        resolve("cuda:3", ONE_3090)
    assert "cuda:3" in e.value.message and "1 GPU " in e.value.message and "RTX 3090" in e.value.message
    assert "below 1" in e.value.hint
    with pytest.raises(UsageError) as e:
        resolve("cuda", CPU_ONLY)
    assert "has none" in e.value.message and "auto or cpu" in e.value.hint
    with pytest.raises(ValueError, match="invalid device"):
        check_spec("gpu0")


@pytest.mark.parametrize("precision,cap,spec,expected", [
    ("auto", ONE_3090, "auto", "bfloat16"),  # Ampere: bf16
    ("auto", TWO_GPUS, "cuda:1", "float16"),  # a T4 has no bf16: fp16
    ("auto", CPU_ONLY, "auto", "float32"),
    ("bf16", CPU_ONLY, "cpu", "float32"),  # the CPU keeps fp32 weights; bf16 is autocast there
    ("fp32", ONE_3090, "auto", "float32"),
    ("fp16", ONE_3090, "auto", "float16"),
])
def test_precision_auto_loads_bf16_or_fp16_on_cuda_and_fp32_on_the_cpu(precision, cap, spec, expected):
    assert load_dtype(precision, resolve(spec, cap)) == expected


def test_bf16_on_a_gpu_without_it_is_refused():
    with pytest.raises(UsageError) as e:
        load_dtype("bf16", resolve("cuda:1", TWO_GPUS))
    assert "Ampere" in e.value.message and "fp16" in e.value.hint


def test_llama_cpp_gpu_layers():
    assert gpu_layers(None, offload_supported=True) == -1  # all, where the build can offload
    assert gpu_layers(None, offload_supported=False) == 0
    assert gpu_layers(20, offload_supported=False) == 20  # as configured


def test_the_lora_trainer_decides_from_its_config(tmp_path, monkeypatch):
    """The trainer's device, dtype, autocast and checkpointing on a fake 3090 and on this CPU."""
    import ftctl_plugins.trainers.lora as lora
    from ftctl.kinds import Context

    def trainer(**cfg):
        return lora.LoraTrainer(lora.LoraConfig(**cfg), Context(tmp_path, "m", tmp_path, log=lambda _m: None))

    monkeypatch.setattr(lora, "probe_devices", lambda: ONE_3090)
    t = trainer(qlora=True)
    d = t.device()
    assert str(d) == "cuda:0" and t.dtype(d) == "bfloat16" and lora._mixed_precision("auto", d) == "bf16"
    assert t.checkpointing(d)  # on by default under QLoRA
    assert not trainer().checkpointing(d) and not trainer(qlora=True, gradient_checkpointing=False).checkpointing(d)
    assert lora._quantization(t.config, "bfloat16") == {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4",
                                                        "double_quant": True, "compute_dtype": "bfloat16"}
    with pytest.raises(UsageError, match="does not exist"):
        trainer(device="cuda:2").device()
    monkeypatch.setattr(lora, "probe_devices", lambda: CPU_ONLY)
    cpu = trainer(precision="auto").device()
    assert str(cpu) == "cpu" and trainer().dtype(cpu) == "float32"
    assert trainer().checkpointing(cpu) and not trainer(gradient_checkpointing=False).checkpointing(cpu)
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        trainer(precision="fp16").dtype(cpu)
    with pytest.raises(UsageError, match="needs a CUDA GPU"):
        trainer(device="cuda").preflight()


def test_cards_for_planning():
    assert card(24) == Device("cuda", 0, 24 * 2**30) and card(12).bf16 and card(12).name == "12 GB GPU"
