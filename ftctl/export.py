"""`ftctl export`: a version's adapter -> merged HF directory, GGUF files, GGUF LoRA, verified.

The exporter plugin writes into a temp directory beside exports/; only when every file passed
verification is it moved to exports/<model>/<version>/ and recorded (DVC + models.lock + commit)
through ``ws.record``. A failed check, a converter crash or a full disk leaves exports/ and
models.lock exactly as they were.

Import-light: torch/transformers/llama_cpp load inside the exporter plugin.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ftctl import plugins
from ftctl.errors import FtctlError, UsageError
from ftctl.registry import card
from ftctl.registry.versions import resolve, split_ref
from ftctl.registry.workspace import dvc_md5, locked
from ftctl.lib.atomic import make_temp_dir
from ftctl.lib.log import Log
from ftctl.lib.process import polite_threads



class NoAdapter(UsageError):
    """The version has no adapter to export (base, or its files are not in the workspace)."""


class PreflightFailed(FtctlError):
    """The model cannot be converted by llama.cpp as it is: said before any work starts."""


@locked
def export(ws, ref: str, *, merged: bool | None = None, gguf: bool | None = None, quants=None,
           lora_gguf: bool | None = None, force: bool = False, log: Log = print) -> dict[str, Any]:
    """Export one version. Flags left as None take export.<exporter>'s config; returns the
    scripting contract: {"version", "files": [{path, kind, quant, sha256, token_agreement, parity}]}."""
    from ftctl.kinds import ExportRequest

    polite_threads()
    model, r = split_ref(ref, ws.config.default_model)
    lock = ws.read_lock()
    version = resolve(lock, model, r)
    if version == "base":
        raise NoAdapter("`base` has no adapter to export", hint="export a trained version, e.g. `ftctl export latest`")
    entry = lock.state(model).versions[version]
    cfg = ws.model(model)
    name = cfg.export.exporter
    exporter = plugins.build("exporter", name, cfg.export.plugin_config(name), ws.context(model, log),
                             key=f"models.{model}.export.{name}")
    defaults = exporter.defaults()
    quant_list = _names(quants) if quants else list(defaults.quants)
    if quants and gguf is None:
        gguf = True
    merged = defaults.merged if merged is None else merged
    lora_gguf = defaults.lora_gguf if lora_gguf is None else lora_gguf
    if gguf is None:
        gguf = not (merged or lora_gguf)  # a bare `ftctl export v1.1` means the GGUF files
    if not gguf:
        quant_list = []
    if not (merged or quant_list or lora_gguf):
        raise UsageError("nothing to export", hint="choose --gguf (with --quant), --merged or --lora-gguf")

    adapter_rel = entry.adapter.path
    adapter_dir = ws.root / adapter_rel if adapter_rel else None
    if adapter_dir is None or not (adapter_dir / "adapter_config.json").is_file():
        raise NoAdapter(f"{model}@{version} has no adapter" + (f" in {adapter_rel}" if adapter_rel else ""),
                        hint=f"restore it with `ftctl checkout {model}@{version}`" if adapter_rel
                        else "only trained versions can be exported; see `ftctl versions`")

    out_dir = ws.export_dir(model, version)
    staging_root = ws.state_dir / "tmp"  # same filesystem as exports/: the final move is a rename
    base = ws.resolve_base(model, entry.base.get("ref"), log=log)  # the base it was trained on
    request = ExportRequest(model=model, version=version, base=base, adapter_dir=adapter_dir, out_dir=staging_root,
                            merged=merged, quants=quant_list, lora_gguf=lora_gguf, workspace_cache=ws.cache_dir,
                            base_quantization=entry.training.get("base_quantization"))
    wanted = set(exporter.outputs(request))  # the exporter names its files
    have = {Path(f["path"]).name for f in entry.exports}
    if not force and out_dir.is_dir() and wanted <= have and all((out_dir / n).exists() for n in wanted):
        log(f"{model}@{version} is already exported (use --force to export again)")
        return {"version": version, "model": model, "skipped": True,
                "files": [_public(f) for f in entry.exports if Path(f["path"]).name in wanted]}

    problems = exporter.check(request)  # e.g. a missing converter, an architecture llama.cpp cannot take
    if problems:
        raise PreflightFailed(f"{model}@{version} cannot be exported: {problems[0]}",
                              hint="; ".join(problems[1:3]) or "see `ftctl train --preview` for the preflight")

    staging_root.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(f"export-{model}-{version}-", staging_root)  # becomes exports/<model>/<version>
    try:
        result = exporter.export(dataclasses.replace(request, out_dir=staging,
                                                     task_prompts=held_out_prompts(ws, model)))
        files = [_describe(ws, f, staging, out_dir) for f in result.files]
        files += _carry_over(entry.exports, staging, out_dir)
        old = _move_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    # the model card names the exported files and their parity: regenerated, tracked with the adapter
    card.write(ws, model, version, adapter_dir, entry.model_copy(update={"exports": files}))

    def update(lock):
        v = lock.state(model).versions[version]
        v.exports = files
        v.adapter.md5 = dvc_md5(adapter_dir)

    try:
        ws.record(f"export {model} {version}", update, track=[out_dir, adapter_dir])
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # not recorded: not visible
        if old:
            os.replace(old, out_dir)  # a --force re-export that failed keeps the previous files
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
    log(f"exported {model}@{version}: " + ", ".join(f"{f['kind']}" + (f" {f['quant']}" if f.get("quant") else "")
                                                    for f in files))
    return {"version": version, "model": model, "skipped": False, "files": [_public(f) for f in files],
            "checks": result.checks}


def gguf_path(ws, model: str, version: str, quant: str | None = None, kind: str = "gguf") -> Path:
    """The exported GGUF of ``model@version`` (the first of ``kind`` if ``quant`` is None)."""
    entry = ws.read_lock().state(model).versions.get(version)
    if entry is None:
        raise UsageError(f"unknown version {version!r} of model {model!r}", hint="see `ftctl versions`")
    found = entry.find_export(kind, quant)
    if found is not None:
        return ws.root / found.path
    have = ", ".join(f"{f.kind}:{f.quant}" for f in entry.exports) or "none"
    raise UsageError(f"{model}@{version} has no {kind} export" + (f" {quant}" if quant else ""),
                     hint=f"exports: {have}; run `ftctl export {model}@{version} --quant {quant or 'Q8_0'}`")


def held_out_prompts(ws, model: str, limit: int = 32) -> list[list[dict[str, str]]]:
    """Up to ``limit`` prompts of the model's held-out test split (each chat cut after its last
    user turn), for the exporter's parity probes: the ones with the smallest content hash, so the
    choice depends on the split's contents, never on its order. [] when there is no snapshot."""
    import hashlib

    from ftctl.records import read_jsonl

    path = ws.snapshot_paths(model)["test"]
    if not path.is_file():
        return []
    picked: dict[str, list[dict[str, str]]] = {}
    for ex in read_jsonl(path):  # streamed: keeping only `limit` chats keeps memory flat
        last_user = max((i for i, m in enumerate(ex.messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            continue
        chat = [{"role": m["role"], "content": m["content"]} for m in ex.messages[:last_user + 1]]
        key = hashlib.sha256(json.dumps(chat, sort_keys=True).encode()).hexdigest()
        if key in picked:
            continue
        picked[key] = chat
        if len(picked) > limit:
            del picked[max(picked)]
    return [picked[k] for k in sorted(picked)]


# --- files ----------------------------------------------------------------------------------


def _names(values) -> list[str]:
    """``["q8_0", "Q4_K_M,F16"]`` -> ["Q8_0", "Q4_K_M", "F16"] (the exporter judges the names)."""
    names = (n.strip().upper() for v in values or [] for n in str(v).split(","))
    return list(dict.fromkeys(n for n in names if n))


def _describe(ws, f, staging: Path, out_dir: Path) -> dict[str, Any]:
    from ftctl.lib.basemodel import dir_sha256
    from ftctl.lib.digest import file_sha256

    final = out_dir / Path(f.path).relative_to(staging)
    digest = dir_sha256(Path(f.path)) if Path(f.path).is_dir() else file_sha256(Path(f.path))
    return {"path": ws.rel(final) if final.is_relative_to(ws.root) else str(final), "kind": f.kind,
            "quant": f.quant, "sha256": digest, "token_agreement": f.token_agreement,
            "bytes": _size(Path(f.path)), **f.extra}


def _size(p: Path) -> int:
    return sum(x.stat().st_size for x in p.rglob("*") if x.is_file()) if p.is_dir() else p.stat().st_size


def _public(f: dict) -> dict:
    """A file of the `ftctl export --json` contract; ``parity`` (GGUFs): top-1 agreement, KL and
    the base's figures for the same type (see docs/export.md)."""
    keys = ("path", "kind", "quant", "sha256", "token_agreement")
    return {**{k: f.get(k) for k in keys}, **({"parity": f["parity"]} if f.get("parity") else {})}


def _carry_over(previous: list[dict], staging: Path, out_dir: Path) -> list[dict]:
    """Files exported before and not made again (e.g. Q8_0 when only Q4_K_M is added) stay:
    a server may be running from them. Returns their lock entries."""
    kept = []
    for f in previous:
        name = Path(f["path"]).name
        src, dst = out_dir / name, staging / name
        if dst.exists() or not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        kept.append(f)
    return kept


def _move_in(staging: Path, out_dir: Path) -> Path | None:
    """Put the verified staging dir at exports/<model>/<version>/ (renames only); returns where
    the previous files went (kept until the new ones are recorded)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out_dir.exists():
        old = staging.with_name(f"{staging.name}.old")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    return old
