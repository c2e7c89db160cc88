"""A workspace: a git repository + DVC + ftctl.yaml + models.lock, and the run lock.

The core (never a plugin) records versions here, through :meth:`Workspace.record`, which is
the only path that writes models.lock, creates commits and tags, and talks to DVC:

    journal -> dvc add -> models.lock -> git commit -> git tag -> journal removed

A crash anywhere before the commit is rolled back by the next command (models.lock and the
.dvc files are restored from HEAD; stored artifacts stay in the DVC cache); a crash between
the commit and the tag is rolled forward (the tag is created). No half entry, no orphan tag.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from ftctl.registry import lockfile
from ftctl.lib.atomic import read_json, write_text
from ftctl.lib.log import current_user
from ftctl.lib.times import now
from ftctl.config import CONFIG_FILE, FtctlConfig, LoadedConfig, ModelConfig, load
from ftctl.lib.redact import redact
from ftctl.errors import ExternalToolError, FtctlError, Locked, NotAWorkspace
from ftctl.kinds import BaseModelRef, Context, Log
from ftctl.lib import basemodel
from ftctl.registry.lockfile import LOCK_FILE, Lock
from ftctl.lib.process import dvc, git
from ftctl.registry.versions import tag_name

STATE_DIR = ".ftctl"
SPLITS = ("train", "val", "test")
# a dataset snapshot (data/<model>/, written by collect): the splits, the preference pairs, every
# disliked answer, the data card and the rejected rows
SNAPSHOT_FILES = {**{s: f"{s}.jsonl" for s in SPLITS}, "preferences": "preferences.jsonl",
                  "unpaired": "unpaired.jsonl", "card": "card.json", "rejects": "rejects.jsonl",
                  "seen": "seen.jsonl"}  # seen: when each train row first entered a snapshot (registry/seen.py)
JOURNAL = "txn.json"
# (workspace root, thread) -> how deep the run lock is held: nested core verbs (cycle -> train)
# re-enter it instead of deadlocking on their own flock
_HELD: dict[tuple[Path, int], int] = {}


class Workspace:
    def __init__(self, root: Path, overrides: tuple[str, ...] = ()):
        self.root = Path(root).resolve()
        self.overrides = tuple(overrides)

    # --- finding and paths --------------------------------------------------------------

    @classmethod
    def find(cls, start: Path | None = None, overrides: tuple[str, ...] = ()) -> Workspace:
        start = Path(start or os.getcwd()).resolve()
        for d in (start, *start.parents):
            if (d / CONFIG_FILE).is_file():
                return cls(d, overrides)
        raise NotAWorkspace(f"{start} is not an ftctl workspace (no {CONFIG_FILE} here or above)",
                            hint="run `ftctl init` to make it one, or pass -C DIR")

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def state_dir(self) -> Path:
        d = self.root / STATE_DIR
        d.mkdir(exist_ok=True)
        return d

    @property
    def cache_dir(self) -> Path:
        d = self.state_dir / "cache"
        d.mkdir(exist_ok=True)
        return d

    def data_dir(self, model: str) -> Path:
        return self.root / "data" / model

    def snapshot_paths(self, model: str) -> dict[str, Path]:
        """The files of a model's snapshot: train, val, test, preferences, unpaired, card, rejects."""
        d = self.data_dir(model)
        return {k: d / name for k, name in SNAPSHOT_FILES.items()}

    def adapter_dir(self, model: str, version: str) -> Path:
        return self.root / "adapters" / model / version

    def export_dir(self, model: str, version: str) -> Path:
        return self.root / "exports" / model / version

    def reports_dir(self, model: str) -> Path:
        return self.root / "reports" / model

    def run_dir(self, model: str, name: str) -> Path:
        """Local, resumable run state (checkpoints): .ftctl/runs/<model>/<name>."""
        return self.state_dir / "runs" / model / name

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    # --- config and lock ----------------------------------------------------------------

    @cached_property
    def loaded(self) -> LoadedConfig:
        return load(self.config_path, self.overrides)

    @property
    def config(self) -> FtctlConfig:
        return self.loaded.config

    def model(self, name: str | None = None) -> ModelConfig:
        return self.config.model(name)

    def resolve_base(self, model: str, ref: str | None = None, log: Log | None = None) -> BaseModelRef:
        """``ref`` (default: the model's ``base:``) as a local HF directory: paths relative to this
        workspace, with the model's trust_remote_code. Train, export and eval resolve it here."""
        cfg = self.model(model)
        return basemodel.resolve_base(ref or cfg.base, trust_remote_code=cfg.trust_remote_code, root=self.root,
                                      log=log)

    def secret(self) -> bytes:
        """The workspace secret (registry/secret.py) that keys hashes of user data. Created on
        first use, but never anew while models.lock holds tombstones made with one: a new
        secret would silently stop matching them."""
        from ftctl.registry import secret

        made = {e.get("secret") for e in (self.read_lock().model_extra or {}).get("tombstones") or []} - {None}
        return secret.load(self.root, create=not made)

    def read_lock(self) -> Lock:
        return lockfile.read(self.lock_path)

    def context(self, model: str | None = None, log: Callable[[str], None] = print, instance: str = "") -> Context:
        return Context(root=self.root, model=model or self.config.default_model,
                       cache_dir=self.cache_dir, log=log, instance=instance)

    # --- the run lock -------------------------------------------------------------------

    def holds_lock(self) -> bool:
        return bool(_HELD.get((self.root, threading.get_ident())))

    @contextlib.contextmanager
    def run_lock(self, command: str, wait: float = 0) -> Iterator[None]:
        """One mutating command at a time. An OS lock (flock): a killed holder releases it.

        Reentrant in one thread: a core verb called by another (cycle -> train) or by a caller
        that already holds the lock (the CLI, ``ftctl serve``) just goes on."""
        key = (self.root, threading.get_ident())
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        from filelock import FileLock, Timeout

        info = self.state_dir / "run.lock.json"
        lock = FileLock(str(self.state_dir / "run.lock"))
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            holder = read_json(info) or {}
            raise Locked(
                "another ftctl command holds the workspace lock"
                + (f": `{holder.get('command')}` (pid {holder.get('pid')}, since {holder.get('since')})" if holder else ""),
                hint="wait for it, or retry with --wait SECONDS",
            ) from None
        _HELD[key] = 1
        try:
            write_text(info, json.dumps({"command": command, "pid": os.getpid(), "since": now()}))
            self.recover()
            yield
        finally:
            del _HELD[key]
            with contextlib.suppress(FileNotFoundError):
                info.unlink()
            lock.release()

    # --- recording versions -------------------------------------------------------------

    def check_git_identity(self) -> None:
        if git(self.root, "var", "GIT_COMMITTER_IDENT", check=False).returncode != 0:
            raise FtctlError("git has no identity to commit with",
                             hint='git config user.name "..." && git config user.email "..."')

    def record(self, message: str, update: Callable[[Lock], Any], *, track: list[Path] = (),
               add: list[Path] = (), tag: tuple[str, str] | None = None, tag_message: str = "") -> str:
        """Store artifacts in DVC, update models.lock, commit, then tag. Returns the commit.

        ``update`` mutates the lock in memory; ``track`` are paths to ``dvc add`` (large
        artifacts); ``add`` are small files git tracks itself (reports); ``tag`` is
        (model, version). Must be called under :meth:`run_lock` (core verbs take it with ``@locked``).
        """
        if not self.holds_lock():
            raise FtctlError(f"internal error: `{message}` recorded without the workspace run lock",
                             hint="core verbs take it with @locked; other callers use `with ws.run_lock(...)`")
        self.check_git_identity()
        head = self.head()
        journal = self.state_dir / JOURNAL
        write_text(journal, json.dumps({"message": message, "head": head, "tag": tag, "time": now()}))
        try:
            paths = [self.lock_path, *add]
            for p in track:
                paths += self.dvc_add(p)
            lock = self.read_lock()
            update(lock)
            lockfile.write(self.lock_path, lock)
            rels = sorted({self.rel(p) for p in paths if Path(p).exists()})
            git(self.root, "add", "--", *rels)
            git(self.root, "commit", "--quiet", "--no-verify", "-m", message, "--", *rels)
        except BaseException:
            self.rollback(head)
            journal.unlink(missing_ok=True)
            raise
        commit = self.head()
        if tag:
            git(self.root, "tag", "-a", tag_name(*tag), "-m", tag_message or message, commit)
        journal.unlink(missing_ok=True)
        self.push_quietly(track)
        return commit

    def head(self) -> str | None:
        proc = git(self.root, "rev-parse", "--verify", "-q", "HEAD", check=False)
        return proc.stdout.strip() or None

    def rollback(self, head: str | None) -> None:
        """Undo an unfinished record: the lock and DVC pointers as of ``head``."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / ".git" / "index.lock").unlink()  # left by a killed git; we hold the run lock
        if head:
            git(self.root, "reset", "--quiet", check=False)
            changed = git(self.root, "diff", "--name-only", head, check=False).stdout.split()
            ours = [p for p in changed if p == LOCK_FILE or p.endswith((".dvc", ".gitignore"))]
            if ours:
                git(self.root, "checkout", head, "--", *ours, check=False)
        untracked = git(self.root, "ls-files", "--others", "--exclude-standard", check=False).stdout.split()
        for p in untracked:
            if p.endswith(".dvc"):
                (self.root / p).unlink(missing_ok=True)

    def recover(self) -> str | None:
        """Finish or undo a record interrupted by a crash. Returns what was done, if anything."""
        journal = self.state_dir / JOURNAL
        entry = read_json(journal)
        if entry is None:
            return None
        head = self.head()
        if head != entry.get("head") and entry.get("tag"):
            # the commit landed; only the tag is missing: roll forward
            name = tag_name(*entry["tag"])
            if git(self.root, "rev-parse", "-q", "--verify", f"refs/tags/{name}", check=False).returncode != 0:
                git(self.root, "tag", "-a", name, "-m", entry["message"], head)
            done = f"finished interrupted `{entry['message']}`"
        elif head != entry.get("head"):
            done = f"finished interrupted `{entry['message']}`"
        else:
            self.rollback(head)
            done = f"rolled back interrupted `{entry['message']}`"
        journal.unlink(missing_ok=True)
        self.log_event({"event": "recover", "detail": done})
        return done

    # --- DVC ----------------------------------------------------------------------------

    def dvc_add(self, path: Path) -> list[Path]:
        """Track ``path`` with DVC; returns the files git must commit (.dvc + .gitignore)."""
        path = Path(path)
        dvc(self.root, "add", "--quiet", self.rel(path))
        return [path.with_name(path.name + ".dvc"), path.parent / ".gitignore"]

    def push_quietly(self, paths) -> None:
        """Push to the DVC remote; an unreachable remote is a warning, never a lost version.

        The artifacts stay in the local DVC cache; `ftctl push` (or `dvc push`) sends them later.
        """
        if not paths or not self.config.dvc.push or not self.default_remote():
            return
        args = ["push", "--quiet"]
        if self.config.dvc.remote:
            args += ["-r", self.config.dvc.remote]
        try:
            dvc(self.root, *args, *[self.rel(Path(p)) for p in paths])
        except ExternalToolError as e:
            self.log_event({"event": "dvc_push_failed", "error": e.message})
            self.warnings.append(f"DVC push failed ({e.message}); artifacts are in the local cache, "
                                 "retry with `ftctl push`")

    @cached_property
    def warnings(self) -> list[str]:
        return []

    @functools.cache  # noqa: B019 - one workspace object per command; DVC's CLI is slow to start
    def default_remote(self) -> str | None:
        if self.config.dvc.remote:
            return self.config.dvc.remote
        proc = dvc(self.root, "remote", "default", check=False)
        out = proc.stdout.strip()
        return out if proc.returncode == 0 and out else None

    # --- log ----------------------------------------------------------------------------

    def log_event(self, event: dict[str, Any]) -> None:
        """Append one JSON line to .ftctl/log.jsonl (secrets redacted)."""
        line = json.dumps({"time": now(), "user": current_user(), **event}, default=str)
        with open(self.state_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(redact(line) + "\n")


def locked(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a core verb ``func(ws, ...)`` under the workspace run lock (as DVC's ``@locked``).

    The lock belongs to the logic layer: Python callers and ``ftctl serve`` get it like the CLI.
    Reentrant, so verbs that call verbs (cycle) and callers that hold it already just go on."""

    @functools.wraps(func)
    def wrapper(ws: Workspace, *args: Any, **kwargs: Any) -> Any:
        with ws.run_lock(func.__name__):
            return func(ws, *args, **kwargs)

    return wrapper


def dvc_md5(path: Path) -> str | None:
    """The md5 DVC recorded for a tracked ``path`` (from ``<path>.dvc``), or None."""
    from ruamel.yaml import YAML

    try:
        return YAML(typ="safe").load(Path(f"{path}.dvc").read_text())["outs"][0]["md5"]
    except (OSError, KeyError, IndexError, TypeError):
        return None
