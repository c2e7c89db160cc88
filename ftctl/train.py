"""`ftctl train`: base + dataset snapshot -> a new adapter version (the core side).

The trainer plugin trains inside a run directory (.ftctl/runs/<model>/<run id>: checkpoints,
TensorBoard events, run.json). Only when it finishes does the core copy the adapter to
adapters/<model>/<version>/ and record it (DVC, models.lock, commit, tag, in that order), so no
version exists until a run completes; `--resume` finishes the newest unfinished run.

No torch import here (the plugin and the basemodel helpers load it when they need it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl import plugins
from ftctl.lib.atomic import read_json, write_text
from ftctl.lib.basemodel import ResolvedBase
from ftctl.lib.digest import file_sha256
from ftctl.errors import ConfigError, FtctlError, NothingToDo, UsageError
from ftctl.kinds import TrainRequest, TrainResult
from ftctl.registry import card
from ftctl.registry.lockfile import VersionEntry
from ftctl.registry.versions import next_version, resolve, split_ref
from ftctl.lib.times import now
from ftctl.lib.tracking import Tracking
from ftctl.registry.workspace import Workspace, dvc_md5, locked

RUN_FILE = "run.json"
RESULT_FILE = "result.json"


@locked
def train(ws: Workspace, model: str | None = None, *, from_: str | None = None, resume: bool = False,
          major: bool = False, max_steps: int | None = None, epochs: float | None = None,
          dry_run: bool = False, preview: bool = False, nproc: int | None = None,
          accelerate_config: Path | None = None, qlora: bool | None = None, log=print,
          show_progress: bool = False, refresh: Callable[[Workspace, str], Any] | None = None,
          new_only: bool = False, force: bool = False) -> dict:
    """Train a new version of ``model`` on its snapshot (or finish the newest unfinished run).

    ``new_only`` (with ``from_``): continue the parent on the rows its lineage has not seen, those
    collected after its training snapshot (the snapshot's first-seen ledger, registry/seen.py).
    A run predicted not to fit in its device's memory (``Trainer.memory``) stops before any
    weights load, with the numbers and what to change, unless ``force``.

    ``refresh(ws, model)`` runs before a new run reads the snapshot: `ftctl train` collects there
    when curate.collect_before_train is set (ftctl.verbs); this stage imports no other stage."""
    mc = ws.model(model)
    name = mc.name
    overrides = {k: v for k, v in {"max_steps": max_steps, "epochs": epochs, "qlora": qlora}.items()
                 if v is not None}
    if resume:
        run_dir, spec = unfinished_run(ws, name)
        if from_ or major or new_only:
            raise UsageError("--resume finishes a run as it was started", hint="drop --from/--major/--new-only")
        raw = {**spec["config"], **overrides}
    else:
        # an option (--epochs) wins over the file's setting, under whichever name the file has it
        try:
            written = plugins.get("trainer", mc.train.trainer).Config.canonical(mc.train.plugin_config(mc.train.trainer))
        except ValueError as e:
            raise ConfigError(f"models.{name}.train.{mc.train.trainer}: {e}") from None
        raw = {**written, **overrides}
        spec = None
    trainer_name = spec["trainer"] if spec else mc.train.trainer
    trainer = plugins.build("trainer", trainer_name, raw, ws.context(name, log),
                            key=f"models.{name}.train.{trainer_name}")
    lock = ws.read_lock()

    if spec:
        paths = {k: Path(v) if v else None for k, v in spec["data"].items()}
        _check_unchanged(paths["train"], spec["data_sha256"])
        parent = spec["parent"]
    else:
        if refresh is not None and not (dry_run or preview):
            refresh(ws, name)  # `ftctl train` collects first when asked (ftctl.verbs.train)
        snap = ws.snapshot_paths(name)
        paths = {"train": snap["train"], "val": snap["val"] if snap.get("val") and snap["val"].is_file() else None}
        if not paths["train"].is_file():
            raise UsageError(f"no training data for model {name!r} ({ws.rel(paths['train'])} is missing)",
                             hint="run `ftctl collect` first")
        parent = _parent(ws, lock, name, from_)
        if new_only and not parent:
            raise UsageError("--new-only continues a version on the rows it has not seen: it needs --from VERSION",
                             hint="e.g. --from stable --new-only; from the base, every row is new")
    if not spec:  # a resumed run keeps its own folder (unfinished_run above)
        run_dir = None if dry_run or preview else ws.run_dir(name, datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    fresh = None
    if new_only:
        fresh = _new_rows(ws, name, lock, parent, paths["train"], run_dir)
        if run_dir:
            paths["train"] = fresh["path"]
    init_adapter = ws.adapter_dir(name, parent) if parent else None
    if init_adapter and not (init_adapter / "adapter_config.json").is_file():
        raise UsageError(f"the adapter of {name}@{parent} is not in the work tree",
                         hint=f"run `ftctl checkout {name}@{parent}` (or `dvc pull`) first")
    version = next_version(lock, name, major)
    plan = {"model": name, "version": version, "parent": parent, "base": mc.base,
            "trainer": trainer_name, "params": trainer.config.model_dump(),
            "data": {k: ws.rel(p) if p else None for k, v in paths.items() for p in [v]},
            "rows": {k: _count_lines(p) for k, p in paths.items() if p}, "resume": bool(spec)}
    if fresh:
        plan["rows"]["train"] = fresh["rows"]
        plan["new_only"] = {"since": fresh["since"], "rows": fresh["rows"]}

    trainer.preflight()  # e.g. QLoRA without CUDA: fail before any model loads
    base = ws.resolve_base(name, log=log)
    if spec and base.sha256 != spec["base_sha256"]:
        raise UsageError("the base model changed since this run started", hint="start a new run without --resume")
    if parent:
        parent_base = lock.state(name).versions[parent].base.get("sha256")
        if parent_base and parent_base != base.sha256:
            raise UsageError(f"{name}@{parent} was trained on another base model",
                             hint="--from needs the same base; train from the base instead")
    p = trainer.plan(base, paths["train"], processes=nproc or 1)  # the steps it would take, and warnings
    if dry_run or preview:
        plan["plan"] = p.to_dict() if p else None
        if preview:
            return {**plan, **_preview(trainer, base, paths["train"]), "memory": _memory_table(trainer, base, p)}
        return plan
    _check_memory(trainer, base, p, force, log)

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or {"model": name, "trainer": trainer_name, "config": raw, "parent": parent,
                    "new_only": plan.get("new_only"),
                    "data": {k: str(v) if v else None for k, v in paths.items()},
                    "data_sha256": file_sha256(paths["train"]), "base_sha256": base.sha256, "created": now()}
    _write_run(run_dir, spec, status="running")
    t = mc.train
    tracking = Tracking(t.report_to, model=name, version=version, run_dir=run_dir, mlflow_uri=t.mlflow_uri,
                        mlflow_experiment=t.mlflow_experiment, wandb_project=t.wandb_project,
                        wandb_mode=t.wandb_mode, log=log)
    tracking.start()  # a tracker that cannot be reached is reported and left out, never fatal
    request = TrainRequest(base, paths["train"], paths["val"], run_dir, init_adapter, resume=resume,
                           show_progress=show_progress, report_to=tracking.report_to, run_name=tracking.run_name)
    try:
        with tracking.environment():
            if (nproc and nproc > 1) or accelerate_config:
                result = _launch(ws, trainer, run_dir, request, nproc or 1, accelerate_config)
            else:
                result = trainer.train(request)
    except BaseException as e:
        _write_run(run_dir, spec, status="failed", error=getattr(e, "message", repr(e)))
        raise
    return _record(ws, name, version, parent, base, spec, run_dir, result, trainer_name, log, tracking)


# --- recording ----------------------------------------------------------------------------


def _record(ws, name, version, parent, base, spec, run_dir, result: TrainResult, trainer_name, log,
            tracking: Tracking | None = None) -> dict:
    dest = ws.adapter_dir(name, version)
    if dest.exists():  # left by an interrupted record (never committed): replace it
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(result.adapter_dir, dest)
    created = now()
    # TensorBoard's files stored with the adapter; MLflow's run completed (settings, final metrics, adapter)
    tracked = tracking.finish(params=result.params, metrics=result.metrics, adapter_dir=result.adapter_dir,
                              stored_dir=dest, rel=ws.rel) if tracking else {}

    def entry(state) -> VersionEntry:
        return VersionEntry(
            version=version, parent=parent, created=created,
            base=base.lineage(),
            dataset={**(state.dataset or {}), "train": ws.rel(Path(spec["data"]["train"])),
                     "train_sha256": spec["data_sha256"], **result.data},
            training={"trainer": trainer_name, "params": result.params, "seed": result.seed,
                      "libraries": result.libraries, "from": parent, "steps": result.steps,
                      "tokens": result.tokens, "tokens_per_s": result.tokens_per_s,
                      "seconds": result.seconds, "peak_rss_mb": result.peak_rss_mb, "run": run_dir.name,
                      **({"new_only": spec["new_only"]} if spec.get("new_only") else {}),
                      **({"tracking": tracked} if tracked else {}),
                      **({"base_quantization": result.base_quantization} if result.base_quantization else {})},
            adapter={"path": ws.rel(dest), "md5": dvc_md5(dest)},
            metrics={k: v for k, v in result.metrics.items() if v is not None},
        )

    # the model card replaces peft's template README (which names a local path)
    card.write(ws, name, version, dest, entry(ws.read_lock().state(name)))

    def update(lock):
        state = lock.state(name)
        state.versions[version] = entry(state)

    ws.record(f"train {name} {version}", update, track=[dest], tag=(name, version))
    _write_run(run_dir, spec, status="done", version=version)
    log(f"trained {name}@{version}: train loss {result.metrics.get('train_loss')}, "
        f"val loss {result.metrics.get('val_loss')}")
    return {"model": name, "version": version, "parent": parent,
            "train_loss": result.metrics.get("train_loss"), "val_loss": result.metrics.get("val_loss"),
            "steps": result.steps, "tokens_per_s": result.tokens_per_s, "adapter": ws.rel(dest),
            "optimizer_steps": result.steps, "peak_rss_mb": result.peak_rss_mb, "tracking": tracked}


# --- runs ---------------------------------------------------------------------------------


def _write_run(run_dir: Path, spec: dict, **status) -> None:
    write_text(run_dir / RUN_FILE, json.dumps({**spec, **status, "updated": now()}, indent=2))


def unfinished_run(ws: Workspace, model: str) -> tuple[Path, dict]:
    """The newest run of ``model`` that did not finish, and its spec: what ``--resume`` continues."""
    runs = sorted((ws.state_dir / "runs" / model).glob(f"*/{RUN_FILE}"), reverse=True)
    for f in runs:
        spec = json.loads(f.read_text())
        if spec.get("status") != "done":
            for k in ("status", "error", "updated", "version"):
                spec.pop(k, None)
            return f.parent, spec
    raise UsageError(f"no unfinished training run of model {model!r} to resume",
                     hint="start one with `ftctl train`")


def _check_unchanged(path: Path, sha: str) -> None:
    if not path.is_file() or file_sha256(path) != sha:
        raise UsageError(f"the training data changed since this run started ({path})",
                         hint="start a new run with `ftctl train` (without --resume)")


def _parent(ws, lock, name: str, from_: str | None) -> str | None:
    if not from_:
        return None
    model, ref = split_ref(from_, name)
    if model != name:
        raise UsageError(f"--from {from_} is a version of another model", hint=f"use a version of {name}")
    version = resolve(lock, name, ref)
    return None if version == "base" else version


def _new_rows(ws, name: str, lock, parent: str, train: Path, run_dir: Path | None) -> dict[str, Any]:
    """The train rows first collected after ``parent``'s training snapshot, written into the run
    directory (a resumed run reads the same file); ``run_dir`` None (a dry run) only counts them."""
    from ftctl.registry import seen

    since = seen.snapshot_time(lock.state(name).versions[parent])
    ledger = seen.read(ws.snapshot_paths(name)["seen"])
    rows = seen.new_rows(train, ledger, since)
    if run_dir is None:
        n = sum(1 for _ in rows)
        path = None
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "train.new.jsonl"
        n = 0
        with open(path, "w", encoding="utf-8") as f:
            for line in rows:
                f.write(line)
                n += 1
    if not n:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise NothingToDo(f"no training row of {name} is newer than {name}@{parent}'s snapshot ({since})",
                          hint="collect new feedback first, or train from the base")
    return {"since": since, "rows": n, "path": path}


def _count_lines(path: Path) -> int | None:
    if not path or not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


# --- preview ------------------------------------------------------------------------------


def _preview(trainer, base: ResolvedBase, train_file: Path) -> dict:
    from ftctl.lib.llamacpp import preflight
    from ftctl.lib.chat_format import histogram

    problems = preflight(base.path)  # the same preflight `ftctl export` runs: know it before training
    model_type = json.loads((base.path / "config.json").read_text()).get("model_type", "")
    out = {"architecture": model_type, "export_problems": problems, "gguf_convertible": not problems}
    out["placeholders"] = _placeholders(train_file)
    p = trainer.preview(base, train_file)
    if p is None:
        return {**out, "example": None, "note": f"the {trainer.name} trainer has no preview"}
    return {
        "example": p.example,
        "max_length": p.max_length,
        "histogram": [{"from": a, "to": b, "count": n} for a, b, n in histogram(p.lengths, p.max_length)],
        "examples": p.examples,
        "too_long": sum(1 for n in p.lengths if n > p.max_length),
        "no_assistant_turn": p.no_assistant_turn,
        **out,
    }


def _placeholders(train_file: Path) -> dict:
    """How many of the answers to be trained on hold a scrub placeholder (a model learns to say
    "<PERSON>" from those): the types are the snapshot card's, so ``List<T>`` does not count."""
    from ftctl.lib import placeholders
    from ftctl.lib.scrub import TYPES

    try:
        pii = json.loads((train_file.parent / "card.json").read_text(encoding="utf-8")).get("pii") or {}
    except (OSError, ValueError):
        pii = {}
    known = set(pii.get("types") or ()) | set(TYPES.values())
    return placeholders.answers_with_placeholders(train_file, known)


# --- memory -------------------------------------------------------------------------------

# the cards a GPU user plans for (RTX 3090/4090: 24 GB; RTX 3060: 12 GB)
CARDS_GIB = (24, 12)


def _memory_table(trainer, base: ResolvedBase, plan) -> list[dict]:
    """Predicted peaks: on the configured device, and on a 24 GB and a 12 GB card."""
    from ftctl.lib.device import card

    out = []
    for device in (None, *(card(g) for g in CARDS_GIB)):
        try:
            est = trainer.memory(base, device, plan)
        except FtctlError as e:
            out.append({"device": device.name if device else "configured", "error": e.message})
            continue
        if est is None:
            return []
        out.append({**est.to_dict(), "device": device.name if device else est.device})
    return out


def _check_memory(trainer, base: ResolvedBase, plan, force: bool, log) -> None:
    est = trainer.memory(base, None, plan)
    if est is None or est.fits:
        return
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    parts = ", ".join(f"{k.replace('_', ' ')} {gib(v)}" for k, v in est.parts.items())
    if force:
        log(f"warning: predicted peak {gib(est.total)} is more than {est.device}'s {gib(est.device_bytes)} "
            f"({parts}); training anyway (--force)")
        return
    todo = "; ".join(est.advice) or "a smaller model, batch or sequence length"
    raise UsageError(f"this run is predicted to need {gib(est.total)} at its peak and {est.device} has "
                     f"{gib(est.device_bytes)} ({parts})",
                     hint=f"change one of: {todo}; or train anyway with --force")


# --- several processes --------------------------------------------------------------------


def _launch(ws, trainer, run_dir: Path, request: TrainRequest, nproc: int, accelerate_config) -> TrainResult:
    """torchrun (DDP) or `accelerate launch --config_file` running this module as the worker."""

    write_text(run_dir / "request.json", json.dumps(_jsonable(
        {**dataclasses.asdict(request), "config": trainer.config.model_dump()})))
    for stale in (RESULT_FILE, "error.json"):
        (run_dir / stale).unlink(missing_ok=True)
    worker = ["-m", "ftctl.train", str(ws.root), str(run_dir)]
    if accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
               *(["--num_processes", str(nproc)] if nproc > 1 else []), *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *worker]
    threads = max(1, (os.cpu_count() or 1) // nproc)  # no oversubscription of the cores
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log_file = run_dir / "train.log"  # the workers' output: stdout stays clean for --json
    with open(log_file, "a") as out:
        proc = subprocess.run(cmd, cwd=ws.root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    failure = read_json(run_dir / "error.json")
    if failure:
        raise FtctlError(failure["message"], hint=failure.get("hint"))
    if proc.returncode != 0 or not (run_dir / RESULT_FILE).is_file():
        raise FtctlError(f"distributed training failed (exit code {proc.returncode})",
                         hint=f"see {ws.rel(log_file)}; continue with `ftctl train --resume --nproc {nproc}`")
    data = json.loads((run_dir / RESULT_FILE).read_text())
    data["adapter_dir"] = Path(data["adapter_dir"])
    return TrainResult(**data)


def _worker(root: str, run_dir: str) -> None:
    """One process of a distributed run: rebuild the plugin and request, train, rank 0 reports."""
    run = Path(run_dir)
    spec = json.loads((run / RUN_FILE).read_text())
    req = json.loads((run / "request.json").read_text())
    ws = Workspace(Path(root))
    rank = int(os.environ.get("RANK", "0"))
    log = print if rank == 0 else (lambda _msg: None)
    trainer = plugins.build("trainer", spec["trainer"], req["config"], ws.context(spec["model"], log),
                            key=f"models.{spec['model']}.train.{spec['trainer']}")
    b = req["base"]
    base = ResolvedBase(b["ref"], Path(b["path"]), b["sha256"], Path(b["source_file"]) if b["source_file"] else None,
                        b["trust_remote_code"])
    request = TrainRequest(base, Path(req["train_file"]), Path(req["val_file"]) if req["val_file"] else None,
                           run, Path(req["init_adapter"]) if req["init_adapter"] else None, req["resume"], False,
                           req.get("report_to") or [], req.get("run_name"))
    try:
        result = trainer.train(request)
    except FtctlError as e:
        if rank == 0:
            write_text(run / "error.json", json.dumps({"message": e.message, "hint": e.hint}))
        raise
    if rank == 0:
        write_text(run / RESULT_FILE, json.dumps(_jsonable(dataclasses.asdict(result))))


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
