#!/usr/bin/env python3
"""Install step: fetch llama.cpp's converter scripts for the pinned llama-cpp-python.

The wheel of llama-cpp-python carries the runtime but not ``convert_hf_to_gguf.py``; its sdist
vendors the whole llama.cpp tree. We download that sdist with pip (the ordinary client, no
build, no dependencies) and keep only the converters, so the files ftctl writes are converted by
the same llama.cpp revision that quantizes and serves them.

    python scripts/fetch_llama_cpp_tools.py [--dest DIR] [--force]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ftctl.lib.llamacpp import LLAMA_CPP_PYTHON_VERSION, TOOL_FILES, cache_dir  # noqa: E402


def fetch(dest: Path, version: str, force: bool = False) -> Path:
    if all((dest / name).exists() for name in TOOL_FILES) and not force:
        print(f"llama.cpp converters {version} already in {dest}")
        return dest
    with tempfile.TemporaryDirectory(prefix="ftctl-llama-sdist-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, f"llama-cpp-python=={version}"], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_mkdir(dest.parent)))
        try:
            with tarfile.open(sdist) as tar:
                top = f"llama_cpp_python-{version}/vendor/llama.cpp/"
                members = [m for m in tar.getmembers()
                           if m.name.startswith(top) and m.name[len(top):].split("/")[0] in TOOL_FILES
                           and (m.isfile() or m.isdir())]
                for m in members:
                    m.name = m.name[len(top):]
                # the "data" filter refuses absolute paths, links out of the tree and device files
                tar.extractall(staging, members=members, filter="data")
            missing = [n for n in TOOL_FILES if not (staging / n).exists()]
            if missing:
                raise SystemExit(f"error: the llama-cpp-python {version} sdist has no {', '.join(missing)}")
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)  # atomic: a half-extracted cache is never visible
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"llama.cpp converters {version} -> {dest}")
    return dest


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION, help="llama-cpp-python version (the pinned one)")
    parser.add_argument("--dest", type=Path, help="default: the per-user cache ftctl looks in")
    parser.add_argument("--force", action="store_true", help="fetch again even if present")
    args = parser.parse_args()
    fetch(args.dest or cache_dir(args.version), args.version, args.force)


if __name__ == "__main__":
    main()
