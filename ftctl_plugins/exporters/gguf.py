"""The `gguf` exporter: adapter + base -> merged HF directory -> GGUF files -> verified.

Every step uses llama.cpp's own tools (its converter scripts as a subprocess, its quantizer
through llama-cpp-python) so the files are exactly what llama.cpp expects; then each file is
checked against the merged model in transformers before the core may keep it.

torch/transformers/peft/llama_cpp load inside methods: `ftctl plugins` imports this module.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ftctl.errors import ExternalToolError, FtctlError, UsageError
from ftctl.api import (ExportDefaults, ExportedFile, Exporter, ExportRequest, ExportResult,  # noqa: F401
                       PluginConfig)

# llama.cpp file types by the names users know (llama-quantize's names). F32/F16/BF16 come
# straight from the converter; the rest are quantized from the F16 file by llama.cpp.
CONVERTER_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
               "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS")
ALL_TYPES = (*CONVERTER_TYPES, *QUANT_TYPES)

DEFAULT_PROBES = [
    "What is the capital of France?",
    "Write a short haiku about the sea.",
    "How do I reset my password?",
    "Explain what a GGUF file is in one sentence.",
]


class VerificationFailed(FtctlError):
    """A converted file does not behave like the merged model (or lost its chat metadata)."""


def parse_quants(values) -> list[str]:
    """``["q8_0", "Q4_K_M,F16"]`` -> ["Q8_0", "Q4_K_M", "F16"]; unknown names are usage errors."""
    out: list[str] = []
    for value in values or []:
        for name in str(value).split(","):
            name = name.strip().upper()
            if not name:
                continue
            if name not in ALL_TYPES:
                raise UsageError(f"unknown quantization type {name!r}", hint=f"supported: {', '.join(ALL_TYPES)}")
            if name not in out:
                out.append(name)
    return out


class GgufConfig(PluginConfig):
    quants: list[str] = Field(["Q8_0"], description="what `ftctl export --gguf` writes when --quant is not given")
    merged: bool = Field(False, description="also keep the merged HF directory (safetensors) under exports/")
    lora_gguf: bool = Field(False, description="also write the adapter as a GGUF LoRA (llama-server --lora)")
    modelfile: bool = Field(True, description="an Ollama Modelfile beside each GGUF")
    merged_dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="dtype of the merged HF model (the converter's source)")
    probes: list[str] = Field(DEFAULT_PROBES, min_length=1, description="prompts for the greedy comparison")
    probe_tokens: int = Field(24, ge=1, le=512, description="greedy tokens generated per probe")
    min_agreement: float = Field(0.95, ge=0, le=1)
    strict: list[str] = Field(["F32", "F16", "BF16", "Q8_0"], description="types held to min_agreement (others: reported)")
    llama_cpp_dir: str | None = Field(None, description="a llama.cpp checkout whose converters to use")
    n_threads: int | None = Field(None, ge=1, description="threads for llama.cpp (default: all cores)")
    convert_timeout: float = Field(3600, gt=0, description="seconds a converter run may take")

    @field_validator("quants", "strict")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        try:
            return parse_quants(v)
        except UsageError as e:
            raise ValueError(e.message) from None


class GgufExporter(Exporter):
    name = "gguf"
    Config = GgufConfig

    def defaults(self) -> ExportDefaults:
        return ExportDefaults(tuple(self.config.quants), self.config.merged, self.config.lora_gguf)

    def outputs(self, req: ExportRequest) -> list[str]:
        """The names :meth:`export` writes for ``req`` (the core skips what exists already)."""
        stem = f"{req.model}-{req.version}"
        names = ["merged"] if req.merged else []
        for q in parse_quants(req.quants):  # an unknown type is a usage error before any work
            names.append(f"{stem}-{q}.gguf")
            if self.config.modelfile:
                names.append(f"{stem}-{q}.Modelfile")
        if req.lora_gguf:
            names.append(f"{stem}-lora-F16.gguf")
        return names

    def check(self, req: ExportRequest) -> list[str]:
        """llama.cpp's converters must exist (their own error) and accept this base and adapter."""
        from ftctl.export.llamacpp import find_tools
        from ftctl.export.run import preflight

        tools = None
        if req.quants or req.lora_gguf:
            need = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py") if req.lora_gguf else ("convert_hf_to_gguf.py",)
            tools = find_tools(self.config.llama_cpp_dir, req.workspace_cache, need=need)
        return preflight(req.base.path, req.adapter_dir, lora_gguf=req.lora_gguf,
                         tools_root=tools.root if tools else None)

    def export(self, req: ExportRequest) -> ExportResult:
        from ftctl.export.llamacpp import find_tools

        cfg: GgufConfig = self.config
        need = []
        if req.quants:
            need.append("convert_hf_to_gguf.py")
        if req.lora_gguf:
            need += ["convert_hf_to_gguf.py", "convert_lora_to_gguf.py"]
        tools = find_tools(cfg.llama_cpp_dir, req.workspace_cache, need=tuple(dict.fromkeys(need))) if need else None
        log = self.ctx.log
        files: list[ExportedFile] = []
        checks: list[dict[str, Any]] = []

        work = req.out_dir / ".work"  # intermediates (the F16 source of quantization); removed at the end
        work.mkdir(parents=True)
        merged_dir = (req.out_dir if req.merged else work) / "merged"
        log(f"merging the adapter into {req.base.ref} ({cfg.merged_dtype})")
        model, tok = self._merge(req, merged_dir)
        if req.merged:
            files.append(ExportedFile(merged_dir, "merged"))

        stem = f"{req.model}-{req.version}"
        src_type = "F16" if "BF16" not in req.quants or "F16" in req.quants else "BF16"
        src = (req.out_dir if src_type in req.quants else work) / f"{stem}-{src_type}.gguf"
        log("greedy reference continuations of the probe prompts (transformers)")
        reference = Reference.compute(model, tok, cfg.probes, cfg.probe_tokens)
        del model
        if req.quants:
            # one thing at a time: the converter overlapped with torch's threads on a small
            # machine ran many times slower (oversubscribed cores), see benchmarks/export.py
            log(f"converting to GGUF ({src_type}) with llama.cpp's convert_hf_to_gguf.py")
            _finish(_start(tools, [tools.convert_hf, merged_dir, "--outfile", src, "--outtype",
                                   CONVERTER_TYPES[src_type]]), "convert_hf_to_gguf.py", src, cfg.convert_timeout)
            for quant in req.quants:
                path = req.out_dir / f"{stem}-{quant}.gguf"
                if path != src:
                    if quant in CONVERTER_TYPES:
                        _finish(_start(tools, [tools.convert_hf, merged_dir, "--outfile", path, "--outtype",
                                               CONVERTER_TYPES[quant]]), "convert_hf_to_gguf.py", path,
                                cfg.convert_timeout)
                    else:
                        log(f"quantizing to {quant} with llama.cpp")
                        quantize(src, path, quant, cfg.n_threads)
                check = self._verify(path, quant, reference, tok)
                checks.append(check)
                files.append(ExportedFile(path, "gguf", quant, check["token_agreement"]))
                if cfg.modelfile:
                    from ftctl_plugins.exporters.modelfile import write_modelfile

                    files.append(ExportedFile(write_modelfile(path, tok), "modelfile", quant))
        if req.lora_gguf:
            files += self._lora(req, tools, reference, tok, checks, stem)
        shutil.rmtree(work)
        return ExportResult(files, checks)

    # --- steps ----------------------------------------------------------------------------

    def _merge(self, req: ExportRequest, out: Path):
        """Base in full precision (a QLoRA run's 4-bit base is never merged into), + adapter, merged."""
        import torch
        from peft import PeftModel

        from ftctl.train.basemodel import load_model, load_tokenizer

        tok = load_tokenizer(req.base)
        base = load_model(req.base, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(req.adapter_dir)).merge_and_unload()
        model.eval()
        gen = model.generation_config
        if gen.eos_token_id is None and tok.eos_token_id is not None:
            gen.eos_token_id = tok.eos_token_id
        dtype = getattr(torch, self.config.merged_dtype)
        with _disk_errors(out):
            model.to(dtype).save_pretrained(out)
            tok.save_pretrained(out)
        model.to(torch.float32)
        if any(out.glob("*.bin")) or not any(out.glob("*.safetensors")):
            raise FtctlError("the merged model was not saved as safetensors", hint="upgrade transformers")
        return model, tok

    def _verify(self, path: Path, quant: str, reference: Reference, tok, lora: Path | None = None) -> dict:
        cfg: GgufConfig = self.config
        agreement, diffs, problems = reference.compare(path, tok, lora=lora, n_threads=cfg.n_threads)
        strict = quant in cfg.strict
        label = f"{path.name}" + (f" + {lora.name}" if lora else "")
        self.ctx.log(f"{label}: {agreement:.1%} of probe tokens agree with the merged model"
                     + ("" if strict else " (reported)"))
        if strict and agreement < cfg.min_agreement:
            problems.append(f"only {agreement:.1%} of probe tokens agree with the merged model "
                            f"(needs {cfg.min_agreement:.0%})")
        if problems:
            shown = "; ".join(f"probe {d['probe']!r}: HF {d['hf']!r} vs GGUF {d['gguf']!r}" for d in diffs[:2])
            raise VerificationFailed(f"{label} failed verification: {problems[0]}"
                                     + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                                     hint=shown or "; ".join(problems[1:3]) or "see the converter's version")
        return {"file": path.name, "quant": quant, "token_agreement": round(agreement, 4), "strict": strict,
                "differing": diffs[:3]}

    def _lora(self, req, tools, reference, tok, checks, stem) -> list[ExportedFile]:
        """The adapter alone as a GGUF LoRA, checked applied to an F16 GGUF of the base."""
        base_gguf = base_f16_gguf(req.base, tools, self.config.convert_timeout, self.ctx.log)
        path = req.out_dir / f"{stem}-lora-F16.gguf"
        self.ctx.log("converting the adapter with llama.cpp's convert_lora_to_gguf.py")
        _finish(_start(tools, [tools.convert_lora, "--base", req.base.path, "--outtype", "f16",
                               "--outfile", path, req.adapter_dir]),
                "convert_lora_to_gguf.py", path, self.config.convert_timeout)
        check = self._verify(base_gguf, "F16", reference, tok, lora=path)
        check["file"] = path.name
        checks.append(check)
        return [ExportedFile(path, "lora-gguf", "F16", check["token_agreement"],
                             {"base_gguf": str(base_gguf), "base_sha256": req.base.sha256})]


# --- llama.cpp tools ------------------------------------------------------------------------


def _start(tools, args: list) -> subprocess.Popen:
    # an argument list, never a shell string; the scripts' own gguf-py comes first on the path
    return subprocess.Popen([sys.executable, *map(str, args)], env=tools.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, name: str, out: Path, timeout: float) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        Path(out).unlink(missing_ok=True)
        raise ExternalToolError(f"llama.cpp's {name} timed out after {timeout:.0f}s",
                                hint="raise export.gguf.convert_timeout") from None
    if proc.returncode != 0 or not Path(out).is_file():
        Path(out).unlink(missing_ok=True)
        lines = [ln for ln in (output or "").splitlines() if ln.strip()]
        if any("No space left on device" in ln for ln in lines):
            raise FtctlError(f"the disk filled up while llama.cpp's {name} wrote {Path(out).name}",
                             hint="free some space (or move the workspace) and run the export again; "
                                  "nothing was recorded")
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ExternalToolError(f"llama.cpp's {name} failed: {last[:300]}",
                                hint="check that the model's architecture is supported by this llama.cpp "
                                     "(`ftctl train --preview` runs the preflight); nothing was recorded")


def quantize(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """llama.cpp's quantizer, in process, through llama-cpp-python's binding."""
    import ctypes

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = n_threads or os.cpu_count() or 1
    with _disk_errors(dst):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        if rc != 0 or not dst.is_file():
            dst.unlink(missing_ok=True)
            if shutil.disk_usage(dst.parent).free < src.stat().st_size // 4:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            raise ExternalToolError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc})",
                                    hint="try another --quant; some types need dimensions divisible by 256")


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ExternalToolError("llama-cpp-python is not installed",
                                hint="pip install 'ftctl[export]' (it builds llama.cpp; a few minutes)") from None
    return llama_cpp


class _disk_errors:
    """ENOSPC/EDQUOT anywhere inside becomes one clear error (the core then keeps nothing)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FtctlError(f"the disk is full: could not write {Path(self.path).name}",
                             hint="free some space (or move the workspace) and run the export again; "
                                  "nothing was recorded") from None
        return False


def base_f16_gguf(base, tools, timeout: float, log) -> Path:
    """An F16 GGUF of the base, converted once per base (by content hash) for LoRA checks."""
    from filelock import FileLock

    from ftctl.export.llamacpp import user_cache_dir

    out = user_cache_dir() / "base-gguf" / f"{base.sha256}-F16.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_file():
            log(f"converting the base {base.ref} to an F16 GGUF (once)")
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            _finish(_start(tools, [tools.convert_hf, base.path, "--outfile", tmp, "--outtype", "f16"]),
                    "convert_hf_to_gguf.py", tmp, timeout)
            os.replace(tmp, out)
    return out


# --- verification ---------------------------------------------------------------------------


def check_metadata(llm, tok) -> list[str]:
    """The chat template and the EOS/BOS ids must survive conversion exactly.

    Read through llama.cpp itself (what the server will use); gguf's GGUFReader parses every
    vocab array element by element, which takes tens of seconds on a 49k-token vocab."""
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    problems = []
    if tok.chat_template and template != tok.chat_template:
        problems.append("the chat template is missing from the GGUF" if not template
                        else "the GGUF's chat template differs from the tokenizer's")
    if tok.eos_token_id is not None and llm.token_eos() != tok.eos_token_id:
        problems.append(f"EOS id is {llm.token_eos()} in the GGUF, {tok.eos_token_id} ({tok.eos_token}) "
                        "in the tokenizer")
    if tok.bos_token_id is not None and llm.token_bos() != tok.bos_token_id:
        problems.append(f"BOS id is {llm.token_bos()} in the GGUF, {tok.bos_token_id} in the tokenizer")
    return problems


@dataclass
class Probe:
    text: str  # the prompt, rendered with the chat template
    prompt: list[int]  # its token ids (HF tokenizer)
    continuation: list[int]  # HF merged model's greedy continuation


@dataclass
class Reference:
    """Greedy continuations of the probe prompts by the merged model in transformers."""

    probes: list[Probe]
    decode: Any

    @classmethod
    def compute(cls, model, tok, prompts: list[str], max_new_tokens: int) -> Reference:
        """One left-padded batch: a forward pass per new token for all probes at once (CPU
        transformers is the slowest step of an export; see benchmarks/export.py)."""
        import torch

        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        texts = [render_prompt(tok, p) for p in prompts]
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(map(len, ids))
        batch = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(batch, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=pad)
        probes = []
        for text, prompt, row in zip(texts, ids, out[:, width:].tolist()):
            cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))  # through the first EOS
            probes.append(Probe(text, prompt, row[:cut]))
        return cls(probes, lambda t: tok.decode(t, skip_special_tokens=False))

    def compare(self, path: Path, tok, *, lora: Path | None = None, n_threads: int | None = None):
        """Teacher-forced greedy agreement: at each step of the HF continuation, does the GGUF
        pick the same next token? (A free-running comparison would count one early near-tie as
        every later token wrong.) Also: does llama.cpp tokenize the prompt the same way?"""
        import numpy as np

        llama_cpp = _llama_cpp()
        n_ctx = max(len(p.prompt) + len(p.continuation) for p in self.probes) + 8
        kwargs = {"lora_path": str(lora)} if lora else {}
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(n_ctx, 64), logits_all=True, verbose=False,
                              n_threads=n_threads or os.cpu_count(), seed=0, **kwargs)
        agree = total = 0
        diffs, problems = [], check_metadata(llm, tok)
        try:
            for p in self.probes:
                ids = llm.tokenize(p.text.encode(), add_bos=False, special=True)
                if ids != p.prompt:
                    problems.append(f"llama.cpp tokenizes the prompt differently ({len(ids)} vs {len(p.prompt)} tokens)")
                if not p.continuation:
                    continue
                llm.reset()
                llm.eval(p.prompt + p.continuation[:-1])
                start = len(p.prompt) - 1
                picks = np.asarray(llm.scores[start:start + len(p.continuation)]).argmax(axis=-1).tolist()
                same = sum(a == b for a, b in zip(picks, p.continuation))
                agree += same
                total += len(p.continuation)
                if same < len(p.continuation):
                    diffs.append({"probe": p.text[-60:], "hf": self.decode(p.continuation),
                                  "gguf": self.decode(_greedy(llm, p.prompt, len(p.continuation)))})
        finally:
            llm.close()
        return (agree / total if total else 1.0), diffs, problems


def _greedy(llm, prompt: list[int], n: int) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        if t == llm.token_eos():
            break
        llm.eval([t])
    return out


def render_prompt(tok, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    if tok.chat_template:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt
