"""An example third-party exporter: a complete ``ftctl.api.Exporter`` in a few lines.

It ships the base model's own GGUF file with the version's PEFT adapter beside it, for servers
that apply an adapter at load time. It shows the contract, not a conversion: ``outputs`` names
the files (the core skips a version that has them), ``check`` says before any work why a request
cannot be done, ``export`` writes into ``request.out_dir`` and returns what it wrote. The core
hashes the files, moves them to exports/<model>/<version>/ and records them.
"""

from __future__ import annotations

import shutil

from pydantic import Field

from ftctl.api import (ExportDefaults, ExportedFile, Exporter, ExportRequest, ExportResult, PluginConfig, UsageError,
                       hookimpl)

BASE = "BASE"  # the only "quant" this exporter writes: the base file as it is


class BaseGgufConfig(PluginConfig):
    adapter: bool = Field(True, description="also copy the PEFT adapter directory beside the GGUF")


class BaseGgufExporter(Exporter):
    name = "base_gguf"
    Config = BaseGgufConfig
    config: BaseGgufConfig

    def defaults(self) -> ExportDefaults:
        return ExportDefaults(quants=(BASE,))

    def outputs(self, request: ExportRequest) -> list[str]:
        unknown = [q for q in request.quants if q != BASE]
        if unknown or request.merged or request.lora_gguf:
            raise UsageError(f"the base_gguf exporter writes the base GGUF only (asked for {unknown or 'more'})",
                             hint=f"use --quant {BASE}, or the gguf exporter")
        stem = f"{request.model}-{request.version}"
        return [f"{stem}.gguf"] + ([f"{stem}-adapter"] if self.config.adapter else [])

    def check(self, request: ExportRequest) -> list[str]:
        src = request.base.source_file
        return [] if src and src.suffix == ".gguf" and src.is_file() else [
            f"the base {request.base.ref} is not a GGUF file (this exporter ships the base's own GGUF)"]

    def export(self, request: ExportRequest) -> ExportResult:
        gguf, *adapter = self.outputs(request)
        shutil.copyfile(request.base.source_file, request.out_dir / gguf)
        files = [ExportedFile(request.out_dir / gguf, "gguf", BASE, extra={"base_sha256": request.base.sha256})]
        if adapter:
            shutil.copytree(request.adapter_dir, request.out_dir / adapter[0])
            files.append(ExportedFile(request.out_dir / adapter[0], "peft-adapter"))
        self.ctx.log(f"exported {request.model}@{request.version}: {', '.join(f.path.name for f in files)}")
        return ExportResult(files, checks=[{"file": gguf, "note": "the base GGUF, unchanged"}])


@hookimpl
def register_exporters(register):
    register(BaseGgufExporter)
