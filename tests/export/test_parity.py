"""The GGUF parity check (issue 15): teacher-forced top-1 agreement and KL, judged against what
the same type costs the base. Real llama.cpp (converter, quantizer, runtime), a tiny model.

The tiny model here has a confident head (logits spread like a trained model's, unlike a random
init's near-uniform ones), so agreement and KL mean something. Broken files are made the way they
happen: a converter that saw a wrong template or a tokenizer missing a token, a LoRA converted at
the wrong scale, an adapter whose outlier weights make a 2-bit quant collapse.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need
from tests.export.conftest import have_converters, have_llama_cpp, make_adapter
from tests.fixtures_models import TOKENIZER_FILES

pytestmark = pytest.mark.integration

TOKENS = 12  # continuation tokens per probe: enough positions, few seconds
TASK = [[{"role": "user", "content": q}] for q in (
    "What does json.dumps do?", "How do I reverse a list in Python?", "What is a tuple?",
    "How do I read a file line by line?")]


@dataclass
class Setup:
    tmp: Path
    base: object  # ResolvedBase of the tiny model
    exporter: object
    tok: object
    prompts: list
    reference: object  # the fine-tune's (merged) Reference
    base_ref: object  # the untuned base's Reference
    merged: Path
    f16: Path  # the fine-tune's F16 GGUF
    tools: object
    figures: dict = field(default_factory=dict)

    def request(self, **kw):
        from ftctl_plugins.exporters.gguf import ExportRequest

        return ExportRequest(model="assistant", version="v1.0", base=self.base, adapter_dir=self.tmp / "adapter",
                             out_dir=self.tmp, merged=False, quants=[], lora_gguf=False,
                             task_prompts=kw.pop("task_prompts", TASK), **kw)

    def base_figures(self, quant: str):
        if quant not in self.figures:
            self.figures[quant] = self.exporter._measure_base(self.request(), self.tools, quant, self.tmp,
                                                              self.base_ref, self.tok)
        return self.figures[quant]

    def convert(self, src: Path, out: Path, *, converter: Path | None = None) -> Path:
        from ftctl_plugins.exporters.gguf import _finish, _start

        script = converter or self.tools.convert_hf
        _finish(_start(self.tools, [script, src, "--outfile", out, "--outtype", "f16"]), script.name, out, 600)
        return out


def peaked_base(out: Path, smollm2_path: Path) -> Path:
    """A tiny random Llama (the real SmolLM2 tokenizer) whose untied head is confident."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (smollm2_path / name).is_file():
            shutil.copy(smollm2_path / name, out / name)
    real = LlamaConfig.from_pretrained(smollm2_path)
    config = LlamaConfig(vocab_size=real.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=real.bos_token_id, eos_token_id=real.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.lm_head.weight.data.normal_(0, 1.0)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_base) -> Setup:
    need(have_llama_cpp(), "llama-cpp-python (pip install 'ftctl[export]')")
    need(have_converters(), "llama.cpp converters (python scripts/fetch_llama_cpp_tools.py)")
    from ftctl.lib.llamacpp import find_tools
    from ftctl.kinds import Context
    from ftctl.lib.basemodel import resolve_base
    from ftctl_plugins.exporters.gguf import GgufConfig, GgufExporter
    from ftctl_plugins.exporters.parity import Reference

    tmp = tmp_path_factory.mktemp("parity")
    base = resolve_base(str(peaked_base(tmp / "base", smollm2_base.path)))
    make_adapter(base.path, tmp / "adapter")
    exporter = GgufExporter(GgufConfig(probe_tokens=TOKENS, task_probes=4),
                            Context(tmp, "assistant", tmp / "cache", log=lambda m: None))
    tools = find_tools(need=("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"))
    s = Setup(tmp, base, exporter, None, [], None, None, tmp / "merged", tmp / "ft-F16.gguf", tools)
    s.tok, model = exporter._load(s.request())
    s.prompts = exporter._prompts(s.request())
    s.base_ref = Reference.compute(model, s.tok, s.prompts, TOKENS)
    model = exporter._merge(model, s.tok, tmp / "adapter", s.merged)
    s.reference = Reference.compute(model, s.tok, s.prompts, TOKENS)
    s.convert(s.merged, s.f16)
    return s


def test_f16_passes_with_top1_at_least_99_5(setup):
    base = setup.base_figures("F16")
    check = setup.exporter._verify(setup.f16, "F16", setup.reference, setup.tok, base, setup.request())
    p = check["parity"]
    assert p["top1"] >= 0.995 and p["kl_mean"] < 1e-3, p
    assert p["positions"] >= 50 and p["probes"] == {"generic": 4, "task": 4}
    assert p["base"]["top1"] >= 0.995 and set(p["limits"]) == {"min_top1", "max_kl"}


def test_first_export_measures_the_base_as_one_step_after_another(setup):
    """A first export makes the base's GGUFs in a thread while the base answers its probes; the
    base's figures it records are those of making and measuring them one after another."""
    import dataclasses

    from ftctl.kinds import Context
    from ftctl_plugins.exporters.gguf import GgufExporter
    from ftctl_plugins.exporters.parity import BaseFigures, probe_texts

    lines = []
    exporter = GgufExporter(setup.exporter.config, Context(setup.tmp, "assistant", setup.tmp / "cache-first",
                                                           log=lines.append))
    out = setup.tmp / "first-export"
    out.mkdir()
    result = exporter.export(dataclasses.replace(setup.request(), quants=["F16", "Q8_0"], out_dir=out))
    parity = {f.quant: f.extra["parity"] for f in result.files if f.kind == "gguf"}
    assert any(line.startswith("the base's Q8_0: top-1") for line in lines)  # measured, not read from a cache
    cached = BaseFigures(exporter.ctx.cache_dir, setup.base.sha256, probe_texts(setup.tok, setup.prompts), TOKENS)
    for quant in ("F16", "Q8_0"):
        assert cached.get(quant) == setup.base_figures(quant)  # to the last digit
        assert parity[quant]["base"] == setup.base_figures(quant).rounded()
    assert sorted(p.name for p in out.iterdir()) == ["assistant-v1.0-F16.Modelfile", "assistant-v1.0-F16.gguf",
                                                     "assistant-v1.0-Q8_0.Modelfile", "assistant-v1.0-Q8_0.gguf"]


def test_reference_distributions_are_the_teacher_forced_ones(setup):
    """The reference takes its distributions from generation's own logits (left-padded batch):
    they are what one unpadded forward pass over prompt + continuation gives, position by position."""
    import numpy as np
    import torch

    model = _merged_model(setup)
    for p in setup.reference.probes:
        with torch.no_grad():
            logits = model(torch.tensor([p.prompt + p.continuation[:-1]])).logits[0, len(p.prompt) - 1:]
        forward = torch.log_softmax(logits.float(), dim=-1).numpy()
        assert forward.shape == p.logprobs.shape
        kl = (np.exp(forward) * (forward - p.logprobs)).sum(-1)  # float32 rounding only: far below any GGUF's
        assert kl.max() < 1e-5, kl
        assert (forward.argmax(-1) == p.continuation).all()  # greedy: each token is the argmax before it


def test_reference_stops_at_the_next_step_when_asked(setup):
    """The export computes the reference in a thread beside the conversion; when the conversion
    fails it sets ``stop``, and generation ends after the step it is in instead of running on."""
    import threading

    from ftctl_plugins.exporters.parity import Reference

    stop = threading.Event()
    stop.set()
    ref = Reference.compute(_merged_model(setup), setup.tok, setup.prompts, TOKENS, stop=stop)
    assert [len(p.continuation) for p in ref.probes] == [1] * len(setup.reference.probes)
    assert max(len(p.continuation) for p in setup.reference.probes) > 1


def test_probes_decoded_together_give_the_figures_of_one_at_a_time(setup, monkeypatch):
    """The GGUF reads all probes in one llama.cpp decode (a sequence each): the same figures, to
    the last digit, as one probe per decode."""
    from ftctl_plugins.exporters import parity

    together = parity.measure(setup.f16, setup.reference, setup.tok).figures
    monkeypatch.setattr(parity, "BATCH_CELLS", 1)
    assert parity.measure(setup.f16, setup.reference, setup.tok).figures == together


def test_probe_order_does_not_change_the_verdict(setup):
    """The same fine-tune measured with five orders of the generic and the task probes: the same
    figures, so the same pass/fail (the probe set is what is measured, not its order)."""
    from ftctl_plugins.exporters.gguf import GgufConfig, GgufExporter
    from ftctl_plugins.exporters.parity import Reference, judge, measure

    model = _merged_model(setup)
    base = setup.base_figures("F16")
    rng = random.Random(7)
    seen = []
    generic = list(GgufConfig().probes)
    for _ in range(5):
        rng.shuffle(generic)
        task = rng.sample(TASK, len(TASK))
        exporter = GgufExporter(GgufConfig(probes=generic, probe_tokens=TOKENS, task_probes=4), setup.exporter.ctx)
        prompts = exporter._prompts(setup.request(task_prompts=task))
        ref = Reference.compute(model, setup.tok, prompts, TOKENS)
        fig = measure(setup.f16, ref, setup.tok).figures
        seen.append((fig, judge(fig, base, exporter.config.margins("F16"), "F16")))
    assert all(s == seen[0] for s in seen), seen
    assert seen[0][1] == []


def test_task_probes_are_chosen_by_content_not_order(setup):
    from ftctl_plugins.exporters.gguf import GgufConfig, GgufExporter

    many = [[{"role": "user", "content": f"question {i}?"}] for i in range(20)]
    exporter = GgufExporter(GgufConfig(task_probes=3), setup.exporter.ctx)
    picks = {json.dumps(exporter._prompts(setup.request(task_prompts=order))) for order in
             itertools.islice(itertools.permutations(many), 0, 200, 40)}
    assert len(picks) == 1 and len(json.loads(picks.pop())) == 4 + 3


def test_wrong_chat_template_fails(setup):
    from ftctl_plugins.exporters.gguf import VerificationFailed

    bad = setup.tmp / "bad-template.gguf"
    subprocess.run([sys.executable, setup.tools.gguf_py / "gguf" / "scripts" / "gguf_new_metadata.py",
                    setup.f16, bad, "--chat-template", "{% for m in messages %}{{ m.content }}{% endfor %}"],
                   env=setup.tools.env(), check=True, capture_output=True, input="y\n", text=True)
    with pytest.raises(VerificationFailed, match="chat template differs from the tokenizer's"):
        setup.exporter._verify(bad, "F16", setup.reference, setup.tok, setup.base_figures("F16"), setup.request())


def test_tokenizer_missing_a_token_fails(setup):
    """The converter read a tokenizer.json that lacks a token (the last merge's): llama.cpp has a
    placeholder at its id and tokenizes differently."""
    from ftctl_plugins.exporters.gguf import VerificationFailed

    src = setup.tmp / "merged-missing-token"
    shutil.copytree(setup.merged, src)
    data = json.loads((src / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    del vocab[last]
    data["model"]["merges"] = [m for m in data["model"]["merges"]
                               if "".join(m if isinstance(m, list) else m.split(" ")) != last]
    (src / "tokenizer.json").write_text(json.dumps(data))
    bad = setup.convert(src, setup.tmp / "missing-token.gguf")
    with pytest.raises(VerificationFailed, match=r"token \d+ .* is missing from the GGUF's vocabulary"):
        setup.exporter._verify(bad, "F16", setup.reference, setup.tok, setup.base_figures("F16"), setup.request())


def test_lora_at_the_wrong_scale_fails(setup):
    """A GGUF LoRA written with twice the adapter's alpha, applied to the base's F16 GGUF."""
    from ftctl_plugins.exporters.gguf import VerificationFailed, _finish, _start, base_f16_gguf

    adapter = setup.tmp / "adapter-2x"
    shutil.copytree(setup.tmp / "adapter", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lora_alpha"] *= 2
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    lora = setup.tmp / "lora-2x.gguf"
    _finish(_start(setup.tools, [setup.tools.convert_lora, "--base", setup.base.path, "--outtype", "f16",
                                 "--outfile", lora, adapter]), "convert_lora_to_gguf.py", lora, 600)
    base_gguf = base_f16_gguf(setup.base, setup.tools, lambda m: None)
    with pytest.raises(VerificationFailed, match=r"lora-2x\.gguf failed verification: .*(top-1|KL)") as e:
        setup.exporter._verify(base_gguf, "F16", setup.reference, setup.tok, setup.base_figures("F16"),
                               setup.request(), lora=lora)
    assert "HF " in e.value.hint and "GGUF " in e.value.hint  # the worst probe, both answers
    assert "export.gguf.parity" in e.value.hint


def test_q2k_of_a_model_that_collapses_fails(setup):
    """An adapter with outlier weights (one huge column per projection): its 2-bit quant loses
    every other weight of those rows, far beyond what Q2_K costs the base."""
    import torch
    from safetensors.torch import load_file, save_file

    from ftctl_plugins.exporters.gguf import VerificationFailed, quantize
    from ftctl_plugins.exporters.parity import Reference

    adapter = setup.tmp / "adapter-outliers"
    shutil.copytree(setup.tmp / "adapter", adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    for name, w in weights.items():
        if "lora_A" in name:
            w.zero_()
            w[0, 7] = 1.0  # B @ A puts B's column into input column 7 of every row
        elif "lora_B" in name:
            w.zero_()
            w[:, 0] = 8.0 * torch.sign(torch.randn(w.shape[0], generator=torch.Generator().manual_seed(1)))
    save_file(weights, adapter / "adapter_model.safetensors")
    tok, model = setup.exporter._load(setup.request())
    model = setup.exporter._merge(model, tok, adapter, setup.tmp / "merged-outliers")
    ref = Reference.compute(model, tok, setup.prompts, TOKENS)
    f16 = setup.convert(setup.tmp / "merged-outliers", setup.tmp / "outliers-F16.gguf")
    q2 = setup.tmp / "outliers-Q2_K.gguf"
    quantize(f16, q2, "Q2_K")
    with pytest.raises(VerificationFailed, match=r"outliers-Q2_K\.gguf failed verification: .*(top-1|KL)"):
        setup.exporter._verify(q2, "Q2_K", ref, tok, setup.base_figures("Q2_K"), setup.request())


def _merged_model(setup):
    from transformers import AutoModelForCausalLM

    import torch

    return AutoModelForCausalLM.from_pretrained(setup.merged, dtype=torch.float32).eval()
