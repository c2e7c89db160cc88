"""Where llama.cpp's Python converters live.

ftctl runs llama.cpp's own ``convert_hf_to_gguf.py`` and ``convert_lora_to_gguf.py`` (never a
re-implementation: they track every architecture llama.cpp supports). They are not part of the
llama-cpp-python wheel, so the install step (``scripts/fetch_llama_cpp_tools.py``) extracts them
from the sdist of the *same pinned version* (its vendored llama.cpp is the one that loads the
files we write). A user's own llama.cpp checkout wins when named by ``LLAMA_CPP_DIR`` or
``export.gguf.llama_cpp_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import ExternalToolError

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
