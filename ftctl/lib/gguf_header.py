"""The tensors a GGUF file holds (name, dimensions, ggml type), read from its header alone.

Written by hand, not with gguf's GGUFReader: that one maps every metadata element into numpy
before it lists a tensor (2.5 s on SmolLM2's 49k-token vocabulary), where the tensor list only
needs the metadata skipped. The layout (GGUF v2 and v3, little-endian) is llama.cpp's
docs/gguf.md: magic, version, tensor count, metadata count, the metadata (key, type, value),
then each tensor's name, dimensions, type and offset.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import NamedTuple

from ftctl.errors import UsageError

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # scalar value types: bytes
_STRING, _ARRAY = 8, 9


class Tensor(NamedTuple):
    name: str
    n_dims: int
    ggml_type: int


def tensors(path: Path) -> list[Tensor]:
    """The tensors of the GGUF file at ``path``; one that is not GGUF (or cut short) is a UsageError."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _read(m, path)
    except (struct.error, KeyError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})",
                         hint="export it again with `ftctl export`, or check the path") from None


def _read(m: mmap.mmap, path: Path) -> list[Tensor]:
    if m[:4] != b"GGUF":
        raise UsageError(f"{path} is not a GGUF file", hint="ftctl's GGUF backend reads llama.cpp's GGUF files")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
    if version not in (2, 3):
        raise UsageError(f"{path} is GGUF version {version}; ftctl reads versions 2 and 3",
                         hint="convert it again with a current llama.cpp")

    def string_end(pos: int) -> int:
        (n,) = struct.unpack_from("<Q", m, pos)
        return pos + 8 + n

    def value_end(pos: int, vtype: int) -> int:
        if vtype == _STRING:
            return string_end(pos)
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", m, pos)
            pos += 12
            if etype in _SIZES:
                return pos + count * _SIZES[etype]
            for _ in range(count):
                pos = value_end(pos, etype)
            return pos
        return pos + _SIZES[vtype]

    pos = 24
    for _ in range(n_kv):
        pos = string_end(pos)
        (vtype,) = struct.unpack_from("<I", m, pos)
        pos = value_end(pos + 4, vtype)
    out = []
    for _ in range(n_tensors):
        end = string_end(pos)
        name = m[pos + 8:end].decode()
        (n_dims,) = struct.unpack_from("<I", m, end)
        pos = end + 4 + 8 * n_dims
        (ggml_type,) = struct.unpack_from("<I", m, pos)
        pos += 12  # the type, then the data's offset
        out.append(Tensor(name, n_dims, ggml_type))
    if pos > len(m):
        raise ValueError("the header runs past the end of the file")
    return out
