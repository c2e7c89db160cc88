"""The `gguf` exporter: adapter + base -> merged HF directory -> GGUF files -> verified.

Every step uses llama.cpp's own tools (its converter scripts as a subprocess, its quantizer
through llama-cpp-python) so the files are exactly what llama.cpp expects; then each file is
checked against the merged model in transformers before the core may keep it (parity.py:
teacher-forced top-1 agreement and KL, judged against what the same type costs the base).

torch/transformers/peft/llama_cpp load inside methods: `ftctl plugins` imports this module.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ftctl.api import (ExportDefaults, ExportRequest, ExportResult, ExportedFile, Exporter, ExternalToolError,
                       FtctlError, PluginConfig, UsageError, base_dtype, dequantize, find_tools, load_model,
                       load_tokenizer, preflight, torch_dtype, user_cache_dir)  # noqa: F401
from ftctl_plugins.exporters.parity import (BaseFigures, Figures, Margins, Reference, _llama_cpp, judge, limits,
                                            measure, probe_texts)

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
# Margins per type where the default (Margins()) is not right; measured, see docs/export.md.
DEFAULT_MARGINS: dict[str, Margins] = {}


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
    probes: list[str] = Field(DEFAULT_PROBES, min_length=1, description=(
        "generic prompts of the parity check (besides held-out prompts of the version's test split)"))
    task_probes: int = Field(8, ge=0, description=(
        "how many held-out prompts of the version's test split the parity check uses"))
    probe_tokens: int = Field(32, ge=1, le=512, description=(
        "tokens of the merged model's greedy answer per probe; both models read them and are "
        "compared position by position"))
    parity: Margins = Field(default_factory=Margins, description=(
        "how much worse than the base's GGUF of the same type a GGUF may be (top-1 agreement, mean KL)"))
    parity_by_quant: dict[str, Margins] = Field(default_factory=lambda: dict(DEFAULT_MARGINS), description=(
        "per-type overrides of `parity`, e.g. {Q2_K: {kl_ratio: 3}}"))
    llama_cpp_dir: str | None = Field(None, description="a llama.cpp checkout whose converters to use")
    n_threads: int | None = Field(None, ge=1, description="threads for llama.cpp (default: all cores)")
    convert_timeout: float = Field(3600, gt=0, description=(
        "seconds llama.cpp's LoRA converter (run as a subprocess) may take"))

    @field_validator("quants")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        try:
            return parse_quants(v)
        except UsageError as e:
            raise ValueError(e.message) from None

    @field_validator("parity_by_quant")
    @classmethod
    def _type_keys(cls, v: dict[str, Margins]) -> dict[str, Margins]:
        try:
            return {parse_quants([k])[0]: m for k, m in v.items()}
        except UsageError as e:
            raise ValueError(e.message) from None

    def margins(self, quant: str) -> Margins:
        return self.parity_by_quant.get(quant, self.parity)


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

        tools = None
        if req.quants or req.lora_gguf:
            need = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py") if req.lora_gguf else ("convert_hf_to_gguf.py",)
            tools = find_tools(self.config.llama_cpp_dir, req.workspace_cache, need=need)
        return preflight(req.base.path, req.adapter_dir, lora_gguf=req.lora_gguf,
                         tools_root=tools.root if tools else None)

    def export(self, req: ExportRequest) -> ExportResult:
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
        tok, base = self._load(req)
        prompts = self._prompts(req)
        types = list(dict.fromkeys([*req.quants, *(["F16"] if req.lora_gguf else [])]))
        calibration = BaseFigures(self.ctx.cache_dir, req.base.sha256, probe_texts(tok, prompts), cfg.probe_tokens)
        base_ref, base_files = None, {}
        uncalibrated = [t for t in types if calibration.get(t) is None]
        if uncalibrated:
            log(f"the base's greedy answers to {len(prompts)} probes (to measure what each type costs it; cached)")
            # The base's GGUFs (converted and quantized by llama.cpp, from the base's files on disk)
            # are made in a thread meanwhile: generation reads every weight at each step for a few
            # rows, the converter is mostly one thread, and neither needs the other.
            with ThreadPoolExecutor(1, thread_name_prefix="ftctl-base-gguf") as base_pool:
                made = base_pool.submit(lambda: {q: self._base_file(req, tools, q, work) for q in uncalibrated})
                try:
                    # the plain model, before PEFT wraps it (generating through disable_adapter()
                    # was many times slower)
                    base_ref = Reference.compute(base, tok, prompts, cfg.probe_tokens)
                finally:
                    # waited for before the next line is logged: the converter captures stdout while it runs
                    base_files = made.result()
        log(f"merging the adapter into {req.base.ref} ({cfg.merged_dtype})")
        model = self._merge(base, tok, req.adapter_dir, merged_dir)
        del base
        if req.merged:
            files.append(ExportedFile(merged_dir, "merged"))

        stem = f"{req.model}-{req.version}"
        src_type = "F16" if "BF16" not in req.quants or "F16" in req.quants else "BF16"
        src = (req.out_dir if src_type in req.quants else work) / f"{stem}-{src_type}.gguf"

        def base_figures(quant: str) -> Figures:
            fig = calibration.get(quant)
            if fig is None:
                fig = self._measure_base(req, tools, quant, work, base_ref, tok, base_files.pop(quant, None))
                calibration.put(quant, fig)
            return fig

        # The merged model's greedy answers (transformers) are computed in a thread while this one
        # makes the GGUFs and measures the base's (none of which needs them): generation at a few
        # rows a step leaves a core idle, the converter is mostly one thread, and torch, numpy and
        # llama.cpp release the GIL. The files are verified once the answers are there.
        log(f"the merged model's greedy answers to {len(prompts)} probes (transformers), beside the conversion")
        stop = threading.Event()
        pool = ThreadPoolExecutor(1, thread_name_prefix="ftctl-reference")
        pending = pool.submit(Reference.compute, model, tok, prompts, cfg.probe_tokens, stop=stop)
        del model
        try:
            if req.quants:
                log(f"converting to GGUF ({src_type}) with llama.cpp's convert_hf_to_gguf.py")
                convert_in_process(tools.convert_hf, tools, [merged_dir, "--outfile", src, "--outtype",
                                                             CONVERTER_TYPES[src_type]], src)
            for quant in req.quants:
                path = req.out_dir / f"{stem}-{quant}.gguf"
                if path == src:
                    continue
                if quant in CONVERTER_TYPES:
                    convert_in_process(tools.convert_hf, tools, [merged_dir, "--outfile", path, "--outtype",
                                                                 CONVERTER_TYPES[quant]], path)
                else:
                    log(f"quantizing to {quant} with llama.cpp")
                    quantize(src, path, quant, cfg.n_threads)
            for quant in types:
                base_figures(quant)  # the first export of a base and probe set: what each type costs it
            reference = pending.result()
        except BaseException:
            stop.set()  # the generation ends at its next step
            raise
        finally:
            pool.shutdown(wait=True)
        base_ref = None

        for quant in req.quants:
            path = req.out_dir / f"{stem}-{quant}.gguf"
            check = self._verify(path, quant, reference, tok, base_figures(quant), req)
            checks.append(check)
            files.append(ExportedFile(path, "gguf", quant, check["token_agreement"], {"parity": check["parity"]}))
            if cfg.modelfile:
                from ftctl_plugins.exporters.modelfile import write_modelfile

                files.append(ExportedFile(write_modelfile(path, tok), "modelfile", quant))
        if req.lora_gguf:
            files += self._lora(req, tools, reference, tok, checks, stem, base_figures("F16"))
        shutil.rmtree(work)
        return ExportResult(files, checks)

    # --- steps ----------------------------------------------------------------------------

    def _load(self, req: ExportRequest):
        """The tokenizer and the base the adapter was trained on, in float32 for the merge: as
        stored, or (QLoRA) loaded 4-bit exactly as in training and dequantized to the base's own
        dtype, so the merged model is the function that was trained, NF4 rounding included."""
        import torch

        tok = load_tokenizer(req.base)
        if req.base_quantization:
            dtype = base_dtype(req.base)
            self.ctx.log(f"dequantizing the 4-bit (NF4) base to {dtype} to merge the QLoRA adapter into")
            quantized = load_model(req.base, dtype=torch_dtype(req.base_quantization.get("compute_dtype", "float32")),
                                   quantization=req.base_quantization)
            base = dequantize(quantized, torch_dtype(dtype)).to(torch.float32)
        else:
            base = load_model(req.base, dtype=torch.float32)
        base.eval()
        return tok, base

    def _prompts(self, req: ExportRequest) -> list:
        """The generic probes plus ``task_probes`` held-out prompts, chosen by content hash
        (so neither the config's nor the test split's order changes which are used)."""
        import hashlib
        import json

        def key(chat):
            return hashlib.sha256(json.dumps(chat, sort_keys=True).encode()).hexdigest()

        task = sorted(req.task_prompts, key=key)[:self.config.task_probes]
        return [*self.config.probes, *task]

    def _merge(self, base, tok, adapter_dir: Path, out: Path):
        """The adapter merged into ``base`` (in place), saved to ``out``; returns the merged model."""
        import torch
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
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
        return model

    def _base_file(self, req: ExportRequest, tools, quant: str, work: Path) -> Path:
        """The untuned base's GGUF of type ``quant``: its F16 (converted once per base, cached),
        or a file in ``work`` converted or quantized from the base as the fine-tune's is."""
        base_f16 = base_f16_gguf(req.base, tools, self.ctx.log)
        path = work / f"base-{quant}.gguf"
        if quant == "F16":
            return base_f16
        if quant in CONVERTER_TYPES:
            convert_in_process(tools.convert_hf, tools, [req.base.path, "--outfile", path, "--outtype",
                                                         CONVERTER_TYPES[quant]], path)
        else:
            quantize(base_f16, path, quant, self.config.n_threads)
        return path

    def _measure_base(self, req: ExportRequest, tools, quant: str, work: Path, base_ref: Reference, tok,
                      path: Path | None = None) -> Figures:
        """What ``quant`` costs the untuned base on the same probes (its GGUF vs itself in HF);
        ``path``: the base's GGUF of that type if made already (:meth:`_base_file`)."""
        path = path or self._base_file(req, tools, quant, work)
        try:
            fig = measure(path, base_ref, tok, n_threads=self.config.n_threads, check_tokens=False).figures
        finally:
            if path.parent == work:  # not the cached F16
                path.unlink(missing_ok=True)
        self.ctx.log(f"the base's {quant}: top-1 {fig.top1:.1%}, mean KL {fig.kl_mean:.4f} (cached)")
        return fig

    def _verify(self, path: Path, quant: str, reference: Reference, tok, base: Figures, req: ExportRequest,
                lora: Path | None = None) -> dict:
        cfg: GgufConfig = self.config
        margins = cfg.margins(quant)
        m = measure(path, reference, tok, lora=lora, n_threads=cfg.n_threads,
                    hint_if=lambda fig: bool(judge(fig, base, margins, quant)))
        fig = m.figures
        label = f"{path.name}" + (f" + {lora.name}" if lora else "")
        self.ctx.log(f"{label}: top-1 agreement {fig.top1:.1%}, mean KL {fig.kl_mean:.4f} over {fig.positions} "
                     f"positions (the base's {quant}: {base.top1:.1%}, {base.kl_mean:.4f})")
        problems = m.problems + judge(fig, base, margins, quant)
        if problems:
            shown = "; ".join(f"probe {d['probe']!r}: HF {d['hf']!r} vs GGUF {d['gguf']!r}" for d in m.diffs)
            hint = ("; ".join(problems[1:3]) + "; " if len(problems) > 1 else "") + (
                shown if len(problems) > len(m.problems) else "check the converter's version and the tokenizer files")
            raise VerificationFailed(f"{label} failed verification: {problems[0]}"
                                     + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                                     hint=hint + "; limits: export.gguf.parity (docs/export.md)")
        n_task = min(cfg.task_probes, len(req.task_prompts))
        parity = {**fig.rounded(), "base": base.rounded(), "limits": limits(base, margins, fig),
                  "probes": {"generic": len(set(cfg.probes)), "task": n_task}}
        return {"file": path.name, "quant": quant, "token_agreement": parity["top1"], "parity": parity}

    def _lora(self, req, tools, reference, tok, checks, stem, base: Figures) -> list[ExportedFile]:
        """The adapter alone as a GGUF LoRA, checked applied to an F16 GGUF of the base (against
        what F16 costs the base: the LoRA adds no rounding of its own beyond its F16 weights)."""
        base_gguf = base_f16_gguf(req.base, tools, self.ctx.log)
        path = req.out_dir / f"{stem}-lora-F16.gguf"
        self.ctx.log("converting the adapter with llama.cpp's convert_lora_to_gguf.py")
        _finish(_start(tools, [tools.convert_lora, "--base", req.base.path, "--outtype", "f16",
                               "--outfile", path, req.adapter_dir]),
                "convert_lora_to_gguf.py", path, self.config.convert_timeout)
        check = self._verify(base_gguf, "F16", reference, tok, base, req, lora=path)
        check["file"] = path.name
        checks.append(check)
        return [ExportedFile(path, "lora-gguf", "F16", check["token_agreement"],
                             {"parity": check["parity"], "base_gguf": str(base_gguf), "base_sha256": req.base.sha256})]


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
        _failed(name, out, (output or "").splitlines() or [f"exit code {proc.returncode}"])


def convert_in_process(script: Path, tools, args: list, out: Path) -> None:
    """llama.cpp's converter run in this process as ``python script args`` would run it, its own
    gguf-py and ``conversion`` package first on the path. A subprocess imported torch and the
    converter's modules again for every file: most of a small model's conversion (10 s of 14 under
    load, benchmarks/export.py). Its output is kept for the error, as a subprocess's was. The
    base's conversions run here too (once per base: 5.5 s of a first export's 15 as a subprocess);
    the LoRA converter still runs as a subprocess and keeps convert_timeout. One at a time: it
    sets sys.argv, sys.path, stdout and the root logger for the whole process."""
    with _CONVERTER:
        _convert_in_process(script, tools, args, out)


_CONVERTER = threading.Lock()


def _convert_in_process(script: Path, tools, args: list, out: Path) -> None:
    import contextlib
    import io
    import logging
    import runpy

    roots = (Path(script).resolve().parent, tools.gguf_py.resolve())
    for name in [m for m in sys.modules if m.split(".")[0] in ("gguf", "conversion")]:
        file = Path(getattr(sys.modules[name], "__file__", None) or "/").resolve()
        if not any(file.is_relative_to(r) for r in roots):  # another copy (pip's gguf, another checkout)
            del sys.modules[name]
    output = io.StringIO()
    root_logger = logging.getLogger()
    argv, path, handlers = sys.argv, sys.path[:], root_logger.handlers[:]
    sys.argv = [str(script), *map(str, args)]
    sys.path[:0] = [str(roots[0]), str(tools.gguf_py)]
    root_logger.handlers = [logging.StreamHandler(output)]  # the script's logging.basicConfig() is then a no-op
    failure = None
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            failure = str(e.code) if isinstance(e.code, str) else f"exit code {e.code}"
    except Exception as e:  # noqa: BLE001 - the converter's own error, reported as a subprocess's was
        failure = "No space left on device" if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) \
            else f"{type(e).__name__}: {e}"
    finally:
        sys.argv, sys.path[:], root_logger.handlers = argv, path, handlers
    if failure is not None or not Path(out).is_file():
        _failed(Path(script).name, out, [*output.getvalue().splitlines(), failure or "it wrote no file"])


def _failed(name: str, out: Path, output: list[str]) -> None:
    """A converter's failure as one clear error (its last line of output is the reason); no partial file."""
    Path(out).unlink(missing_ok=True)
    lines = [ln for ln in output if ln.strip()]
    if any("No space left on device" in ln for ln in lines):
        raise FtctlError(f"the disk filled up while llama.cpp's {name} wrote {Path(out).name}",
                         hint="free some space (or move the workspace) and run the export again; "
                              "nothing was recorded")
    raise ExternalToolError(f"llama.cpp's {name} failed: {lines[-1][:300]}",
                            hint="check that the model's architecture is supported by this llama.cpp "
                                 "(`ftctl train --preview` runs the preflight); nothing was recorded")


def quantize(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """llama.cpp's quantizer, in process, through llama-cpp-python's binding."""
    import ctypes

    import logging

    llama_cpp = _llama_cpp()
    # llama.cpp logs every tensor it quantizes (600 lines for a 135M model) through
    # llama-cpp-python's logger; keep its errors, drop the rest (a failure is raised below anyway)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
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


def base_f16_gguf(base, tools, log) -> Path:
    """An F16 GGUF of the base, converted once per base (by content hash) for LoRA checks."""
    from filelock import FileLock

    out = user_cache_dir() / "base-gguf" / f"{base.sha256}-F16.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_file():
            log(f"converting the base {base.ref} to an F16 GGUF (once)")
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            convert_in_process(tools.convert_hf, tools, [base.path, "--outfile", tmp, "--outtype", "f16"], tmp)
            os.replace(tmp, out)
    return out
