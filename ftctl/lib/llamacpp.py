"""llama.cpp helpers: where its Python converters live, whether it can convert a model (the
preflight `ftctl train --preview` and `ftctl export` run), and loading a GGUF file.

ftctl runs llama.cpp's own ``convert_hf_to_gguf.py`` and ``convert_lora_to_gguf.py`` (never a
re-implementation: they track every architecture llama.cpp supports). They are not part of the
llama-cpp-python wheel, so the install step (``scripts/fetch_llama_cpp_tools.py``) extracts them
from the sdist of the *same pinned version* (its vendored llama.cpp is the one that loads the
files we write). A user's own llama.cpp checkout wins when named by ``LLAMA_CPP_DIR`` or
``export.gguf.llama_cpp_dir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import ExternalToolError, FtctlError, UsageError
from ftctl.lib.device import gpu_layers

# The pinned llama-cpp-python (pyproject's `export` extra pins the same): converter, quantizer
# and the verifying runtime all come from one llama.cpp revision.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# What the install step extracts from the sdist's vendor/llama.cpp/.
TOOL_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")
FETCH_HINT = ("run `python scripts/fetch_llama_cpp_tools.py` (the install step; `make install` runs it), "
              "or point LLAMA_CPP_DIR (or export.gguf.llama_cpp_dir) at a llama.cpp checkout")


@dataclass(frozen=True)
class Tools:
    root: Path  # a directory holding the converter scripts (a llama.cpp checkout or our cache)

    @property
    def convert_hf(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def convert_lora(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    def env(self) -> dict[str, str]:
        """The converters' environment: their own gguf-py first, so script and library match."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.gguf_py), env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def user_cache_dir() -> Path:
    """Per-user cache shared by every workspace: ``$XDG_CACHE_HOME/ftctl`` (default ~/.cache/ftctl)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftctl"


def cache_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return user_cache_dir() / "llama.cpp" / version


def candidates(configured: str | Path | None = None, workspace_cache: Path | None = None) -> list[tuple[str, Path]]:
    found = []
    if os.environ.get("LLAMA_CPP_DIR"):
        found.append(("LLAMA_CPP_DIR", Path(os.environ["LLAMA_CPP_DIR"]).expanduser()))
    if configured:
        found.append(("export.gguf.llama_cpp_dir", Path(configured).expanduser()))
    if workspace_cache is not None:
        found.append(("workspace cache", Path(workspace_cache) / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION))
    found.append(("user cache", cache_dir()))
    return found


def find_tools(configured: str | Path | None = None, workspace_cache: Path | None = None,
               *, need: tuple[str, ...] = ("convert_hf_to_gguf.py",)) -> Tools:
    """The first place that has every file in ``need`` (a named place that lacks them is an error)."""
    looked = []
    for origin, root in candidates(configured, workspace_cache):
        missing = [n for n in need if not (root / n).exists()]
        if not missing:
            return Tools(root.resolve())
        if origin in ("LLAMA_CPP_DIR", "export.gguf.llama_cpp_dir"):
            # a place the user named explicitly must be right, not silently skipped
            raise ExternalToolError(f"{origin}={root} has no {missing[0]}",
                                    hint="point it at the root of a llama.cpp checkout, or unset it to use "
                                         "the converters fetched by the install step")
        looked.append(str(root))
    raise ExternalToolError(f"llama.cpp's {need[0]} was not found (looked in {', '.join(looked)})",
                            hint=FETCH_HINT)


# --- preflight ------------------------------------------------------------------------------


def preflight(base_dir: Path, adapter_dir: Path | None = None, *, lora_gguf: bool = False,
              tools_root: Path | None = None) -> list[str]:
    """Why llama.cpp could not convert this base (+ adapter); [] when it can. Reads only JSON and
    safetensors headers, so `ftctl train --preview` can run it before training. ``tools_root``:
    the converters' directory (default: wherever :func:`find_tools` finds them)."""
    problems: list[str] = []
    config = json.loads((Path(base_dir) / "config.json").read_text())
    archs = config.get("architectures") or []
    try:
        root = tools_root or find_tools().root
    except FtctlError as e:
        problems.append(f"{e.message} ({e.hint})")
    else:
        known = supported_architectures(root)
        if known and archs and not any(a in known for a in archs):  # known empty: a layout we cannot read
            problems.append(f"llama.cpp's converter does not support {', '.join(archs)}")
    vocab = tokenizer_vocab_size(Path(base_dir))
    if vocab is not None and config.get("vocab_size") and vocab > config["vocab_size"]:
        problems.append(f"the tokenizer has {vocab} tokens but the embedding only {config['vocab_size']} rows")
    if adapter_dir is not None and lora_gguf:
        bad = [n for n in adapter_tensors(Path(adapter_dir))
               if "lora_" not in n or re.search(r"(lm_head|embed_tokens|wte|word_embeddings)", n)]
        if bad:
            problems.append(f"the adapter has tensors the LoRA converter cannot take (e.g. {bad[0]}); "
                            "export --gguf (merged) instead, or train without lm_head/embedding modules")
    return problems


def supported_architectures(root: Path) -> set[str]:
    """Architectures registered in the converter (``@ModelBase.register("LlamaForCausalLM", ...)``).

    Read from its sources rather than by running it: importing the converter takes seconds."""
    names: set[str] = set()
    for py in [root / "convert_hf_to_gguf.py", *sorted((root / "conversion").glob("*.py"))]:
        with contextlib.suppress(OSError):
            for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", py.read_text(encoding="utf-8")):
                names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return names


def tokenizer_vocab_size(base_dir: Path) -> int | None:
    path = base_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    ids = set((data.get("model") or {}).get("vocab", {}).values() if isinstance((data.get("model") or {}).get("vocab"), dict) else [])
    ids |= {t["id"] for t in data.get("added_tokens", [])}
    return max(ids) + 1 if ids else None


def adapter_tensors(adapter_dir: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for f in sorted(adapter_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            names += list(st.keys())
    return names


# --- loading a GGUF file -------------------------------------------------------------------


def _gguf(path, module: str, package: str, hint: str) -> Path:
    """``path`` as a GGUF file that exists, once the package that loads it is known to be there."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExternalToolError(f"{package} is not installed", hint=hint)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"GGUF file {path} does not exist", hint="run `ftctl checkout` or `ftctl export` first")
    return path


def _offload() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal...)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(getattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)())


def open_llama(path, n_ctx: int = 2048, seed: int = 0, n_gpu_layers: int | None = None):
    """A GGUF file loaded by llama-cpp-python (greedy generation, the judge, parity checks).

    ``n_gpu_layers``: layers llama.cpp offloads to the GPU (-1: all); None: all when this build of
    llama.cpp can offload, none otherwise (ftctl.lib.device.gpu_layers)."""
    path = _gguf(path, "llama_cpp", "llama-cpp-python", "pip install 'ftctl[export]' (the judge and parity need it)")
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, seed=seed, n_threads=os.cpu_count() or 1,
                 n_gpu_layers=gpu_layers(n_gpu_layers, _offload()), verbose=False)


def open_llama_server(path, n_ctx: int = 2048, parallel: int = 8, threads: int | None = None,
                      n_gpu_layers: int | None = None):
    """llama.cpp's llama-server (the xllamacpp wheel) in this process: ``parallel`` slots of
    ``n_ctx`` tokens each, decoded together (continuous batching) on ``threads`` CPU threads
    (default: every core); quiet. Requests go straight to ``handle_chat_completions`` (no HTTP);
    it listens on a loopback port all the same (a free one)."""
    path = _gguf(path, "xllamacpp", "xllamacpp (llama.cpp's server)",
                 "pip install 'ftctl[eval]' (the GGUF backend decodes with it)")
    from ftctl.lib.process import polite_threads

    polite_threads()  # before the library loads
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    p.hostnames = ["127.0.0.1"]
    p.port = 0
    p.n_parallel = parallel
    p.n_gpu_layers = gpu_layers(n_gpu_layers, _offload())  # -1: all, where the build can offload
    p.n_ctx = n_ctx * parallel  # the KV cache is split evenly among the slots
    p.kv_unified = False
    p.cont_batching = True
    # a batch of several slots runs on cpuparams_batch's threads, one token on cpuparams'
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads or os.cpu_count() or 1
    # threads sleep between steps instead of spinning: on a machine shared with training or
    # other jobs, spinning threads starved each other (2.7 s a token instead of 0.1, measured)
    p.cpuparams.poll = p.cpuparams_batch.poll = 0
    p.endpoint_metrics = False
    p.verbosity = -1  # its log is for a server's operator, not for an eval's reader
    return xllamacpp.Server(p)
