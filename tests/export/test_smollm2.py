"""The real SmolLM2-135M-Instruct through the gguf exporter: the bar the issue sets, on a real model.

Every file is held to what its type costs the untuned base on the same probes (teacher-forced top-1
agreement and KL); F16 agrees on >= 99.5% of positions, and the GGUF LoRA applied to an F16 GGUF of
the base is held to F16's bar.
(The workspace side, DVC and models.lock, is covered with the tiny model in test_export.py.)
"""

from __future__ import annotations

import pytest

from tests.export.conftest import make_adapter

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_smollm2_exports_agree_with_the_merged_model(smollm2_base, tmp_path, real_tools):
    from ftctl.kinds import Context
    from ftctl_plugins.exporters.gguf import ExportRequest, GgufConfig, GgufExporter

    adapter = make_adapter(smollm2_base.path, tmp_path / "adapter", targets=("q_proj", "v_proj", "down_proj"))
    out = tmp_path / "out"
    out.mkdir()
    lines = []
    exporter = GgufExporter(GgufConfig(probe_tokens=16), Context(tmp_path, "assistant", tmp_path, log=lines.append))
    task = [[{"role": "user", "content": "What does json.dumps do?"}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a Python list?"}]]
    result = exporter.export(ExportRequest(model="assistant", version="v1.0", base=smollm2_base, adapter_dir=adapter,
                                           out_dir=out, merged=False, quants=["F16", "Q8_0", "Q4_K_M"],
                                           lora_gguf=True, task_prompts=task))

    parity = {(f.kind, f.quant): f.extra["parity"] for f in result.files if f.token_agreement is not None}
    assert parity[("gguf", "F16")]["top1"] >= 0.995
    assert parity[("gguf", "Q8_0")]["top1"] >= 0.95
    for p in parity.values():  # every type passed against the base's figures for it
        assert p["top1"] >= p["limits"]["min_top1"] and p["kl_mean"] <= p["limits"]["max_kl"]
        assert p["probes"] == {"generic": 4, "task": 2}
    assert parity[("gguf", "Q4_K_M")]["base"]["kl_mean"] > parity[("gguf", "Q8_0")]["base"]["kl_mean"]
    assert any("the base's Q4_K_M" in line for line in lines)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["assistant-v1.0-F16.Modelfile", "assistant-v1.0-F16.gguf",
                     "assistant-v1.0-Q4_K_M.Modelfile", "assistant-v1.0-Q4_K_M.gguf", "assistant-v1.0-Q8_0.Modelfile",
                     "assistant-v1.0-Q8_0.gguf", "assistant-v1.0-lora-F16.gguf"]  # no intermediate left behind
    sizes = {p.name: p.stat().st_size for p in out.glob("*.gguf")}
    assert sizes["assistant-v1.0-Q4_K_M.gguf"] < sizes["assistant-v1.0-Q8_0.gguf"]
