"""What is evaluated: a version's adapter on its base, one of its GGUF exports, or the base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftctl.config import ModelConfig
from ftctl.errors import UsageError
from ftctl.lib import basemodel
from ftctl.lib.digest import file_sha256
from ftctl.registry.versions import resolve, split_ref


@dataclass(frozen=True)
class Target:
    model: str
    version: str  # vX.Y or "base"
    artifact: str  # "hf" or "gguf:<QUANT>"
    base_ref: str
    adapter_dir: Path | None = None
    gguf: Path | None = None
    identity: str = ""  # content identity for the prediction cache (adapter md5 / gguf sha256)
    # how the adapter's base was loaded in training (QLoRA: 4-bit), for the HF backend to match
    base_quantization: dict | None = field(default=None, hash=False, compare=False)

    @property
    def label(self) -> str:
        return self.version if self.artifact == "hf" else f"{self.version} ({self.artifact})"


def parse_artifact(text: str | None) -> tuple[str, str | None]:
    """``hf`` -> ("hf", None); ``gguf:Q6_K`` -> ("gguf", "Q6_K"); ``gguf`` -> ("gguf", None)."""
    kind, _, quant = (text or "hf").partition(":")
    if kind not in ("hf", "gguf") or (kind == "hf" and quant):
        raise UsageError(f"unknown artifact {text!r}", hint="use hf, or gguf:<QUANT> such as gguf:Q6_K")
    return kind, quant or None


def resolve_target(ws, ref: str, *, model: str | None = None, artifact: str | None = None) -> Target:
    m, r = split_ref(ref, model or ws.config.default_model)
    cfg = ws.model(m)
    version = resolve(ws.read_lock(), m, r)
    kind, quant = parse_artifact(artifact or cfg.eval.artifact)
    if version == "base":
        return _base_target(ws, m, cfg, kind, quant)
    entry = ws.read_lock().state(m).versions[version]
    base_ref = entry.base.get("ref") or cfg.base
    if kind == "gguf":
        x = entry.find_export("gguf", quant)
        if x is None:
            have = ", ".join(f"{x.kind}:{x.quant}" for x in entry.exports) or "none"
            raise UsageError(f"{m}@{version} has no GGUF export{f' {quant}' if quant else ''}",
                             hint=f"exports: {have}; run `ftctl export {version}` first")
        path = ws.root / x.path
        if not path.is_file():
            raise UsageError(f"{x.path} is not in the workspace", hint=f"run `ftctl checkout {version}`")
        return Target(m, version, f"gguf:{x.quant}", base_ref, gguf=path, identity=x.sha256 or file_sha256(path))
    adapter = entry.adapter.path
    if not adapter:
        raise UsageError(f"{m}@{version} has no adapter", hint="train it again, or evaluate `base`")
    adapter_dir = ws.root / adapter
    if not adapter_dir.is_dir():
        raise UsageError(f"the adapter of {m}@{version} is not in the workspace ({adapter})",
                         hint=f"run `ftctl checkout {version}` to restore it from DVC")
    return Target(m, version, "hf", base_ref, adapter_dir=adapter_dir,
                  identity=entry.adapter.md5 or basemodel.dir_sha256(adapter_dir),
                  base_quantization=entry.training.get("base_quantization"))


def _base_target(ws, model: str, cfg: ModelConfig, kind: str, quant: str | None) -> Target:
    if kind == "hf":
        return Target(model, "base", "hf", cfg.base, identity=f"base:{cfg.base}")
    path = basemodel.locate(cfg.base, ws.root)  # the base's own GGUF file (no conversion needed to find it)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise UsageError(f"the base of {model} ({cfg.base}) is not a GGUF file",
                         hint="evaluate base with --artifact hf")
    return Target(model, "base", f"gguf:{quant or 'base'}", cfg.base, gguf=path, identity=file_sha256(path))
