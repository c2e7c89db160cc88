"""Which device and dtype a model loads on: decided from the config and what the machine has.

The config names a device (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or an index ``N``); nothing in
ftctl writes a literal device. The decisions are pure functions of a :class:`Capability`, so they
are unit-tested on a CPU-only machine with a made-up GPU; :func:`probe` is the one place that asks
torch what is really there (and so the only function here that imports it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ftctl.errors import UsageError

GIB = 2**30
DEVICE_HELP = "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N, or a GPU index N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|\d+)$")


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    bf16: bool  # compute capability >= 8.0 (Ampere): bf16 matmuls are native


@dataclass(frozen=True)
class Capability:
    """What the machine offers: its CUDA devices (index = position) and its RAM."""

    gpus: tuple[Gpu, ...] = ()
    ram_bytes: int = 0

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)


@dataclass(frozen=True)
class Device:
    """A resolved device: ``cpu`` or ``cuda:N``, with the memory it has."""

    kind: str  # "cpu" | "cuda"
    index: int | None = None
    total_bytes: int = 0
    name: str = field(default="", compare=False)
    bf16: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def device_map(self) -> dict[str, int | str]:
        """transformers' ``device_map``: the whole model on this one device."""
        return {"": self.index if self.is_cuda else "cpu"}


def check_spec(spec: str | int | None) -> str:
    """Validate a configured device (a config validator); returns it as a string."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if not _DEVICE_RE.match(text):
        raise ValueError(f"invalid device {spec!r}: use {DEVICE_HELP}")
    return text


def probe() -> Capability:
    """What this machine has (imports torch: call it only on a path that loads a model)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(p.name, int(p.total_memory), (p.major, p.minor) >= (8, 0)))
    return Capability(tuple(gpus), _ram_bytes())


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def resolve(spec: str | int | None, cap: Capability) -> Device:
    """The device ``spec`` names on a machine with ``cap``; one that does not exist is an error
    (raised before any weights load)."""
    text = check_spec(spec)
    if text == "auto":
        text = "cuda:0" if cap.cuda else "cpu"
    if text == "cpu":
        return Device("cpu", None, cap.ram_bytes, "CPU")
    index = int(text.split(":")[1]) if ":" in text else (int(text) if text.isdigit() else 0)
    if not cap.cuda:
        raise UsageError(f"device {spec!r} needs a CUDA GPU and this machine has none",
                         hint="set the device to auto or cpu (or run on a machine with an NVIDIA GPU and a "
                              "CUDA build of torch)")
    if index >= len(cap.gpus):
        have = ", ".join(f"cuda:{i} ({g.name})" for i, g in enumerate(cap.gpus))
        raise UsageError(f"device {spec!r} does not exist: this machine has {len(cap.gpus)} GPU"
                         f"{'s' if len(cap.gpus) != 1 else ''} ({have})",
                         hint=f"use an index below {len(cap.gpus)}, or auto")
    g = cap.gpus[index]
    return Device("cuda", index, g.total_bytes, g.name, g.bf16)


def load_dtype(precision: str, device: Device) -> str:
    """The dtype weights load in, by name: ``auto`` is bf16 (fp16 before Ampere) on CUDA; on the
    CPU always fp32 (bf16 matmuls on most CPUs are emulated; a bf16 precision there is autocast)."""
    if not device.is_cuda:
        return "float32"
    if precision == "auto":
        return "bfloat16" if device.bf16 else "float16"
    if precision == "bf16" and device.is_cuda and not device.bf16:
        raise UsageError(f"precision bf16 needs an Ampere or newer GPU; {device.name} ({device}) has none",
                         hint="use precision: fp16 or auto")
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]


def compute_dtype(precision: str, device: Device) -> str:
    """The dtype 4-bit (QLoRA) layers compute in: the load dtype, as bitsandbytes dequantizes to it."""
    return load_dtype(precision, device)


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def gpu_layers(setting: int | None, offload_supported: bool) -> int:
    """llama.cpp's ``n_gpu_layers``: a number as configured; unset, every layer (-1) when this
    llama.cpp build can offload to a GPU, else none."""
    if setting is not None:
        return setting
    return -1 if offload_supported else 0


def describe(device: Device) -> str:
    gib = device.total_bytes / 2**30
    return f"{device} ({device.name}, {gib:.1f} GiB)" if device.is_cuda else f"cpu ({gib:.1f} GiB RAM)"


def card(gib: int) -> Device:
    """A CUDA card of ``gib`` GiB with bf16 (Ampere or newer): what `train --preview` plans for."""
    return Device("cuda", 0, gib * GIB, f"{gib} GB GPU", True)
