"""`ftctl init`: make a directory a workspace (git + DVC + ftctl.yaml + models.lock).

Idempotent: every step checks before it acts, so running it twice changes nothing. It refuses
states it cannot reason about (a half-written config, a repository mid-merge) with the reason.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

from ftctl.registry import lockfile
from ftctl.lib.atomic import write_text
from ftctl.config import CONFIG_FILE, check_name, load
from ftctl.errors import ConfigError, FtctlError, UsageError
from ftctl.registry.lockfile import LOCK_FILE, Lock
from ftctl.lib.process import dvc, git
from ftctl.registry import secret
from ftctl.registry.workspace import STATE_DIR

GITIGNORE_LINES = [f"/{STATE_DIR}/", "__pycache__/", secret.GITIGNORE_LINE]
REMOTE_NAME = "ftctl-local"


def default_remote_dir(root: Path) -> Path:
    """Outside the work tree, so deleting a clone never deletes the stored models."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return base / "ftctl" / "dvc-remotes" / f"{root.name}-{digest}"


def init(directory: Path, model: str = "assistant", base: str = "smollm2-135m-instruct",
         remote: str | None = None) -> dict:
    root = Path(directory).resolve()
    try:
        check_name(model, "model name")
    except ValueError as e:
        raise UsageError(str(e)) from None
    root.mkdir(parents=True, exist_ok=True)
    done: list[str] = []

    if not (root / ".git").exists():
        inside = git(root, "rev-parse", "--show-toplevel", check=False)
        if inside.returncode == 0 and Path(inside.stdout.strip()) != root:
            raise FtctlError(f"{root} is inside another git repository ({inside.stdout.strip()})",
                             hint="run `ftctl init` at that repository's top level, or in a separate directory")
        git(root, "init", "--quiet", "--initial-branch=main")
        done.append("git init")
    for state in ("MERGE_HEAD", "rebase-merge", "rebase-apply", "CHERRY_PICK_HEAD"):
        if (root / ".git" / state).exists():
            raise FtctlError(f"the git repository is in the middle of an operation ({state})",
                             hint="finish or abort it (git merge --abort / git rebase --abort) first")

    if not (root / ".dvc").is_dir():
        dvc(root, "init", "--quiet")
        done.append("dvc init")
    if remote or dvc(root, "remote", "default", check=False).returncode != 0:
        url = remote or str(default_remote_dir(root))
        if not remote:
            Path(url).mkdir(parents=True, exist_ok=True)
        # --local: the remote's path is this machine's, so it stays out of the committed config
        dvc(root, "remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)
        done.append(f"dvc remote {REMOTE_NAME} -> {url}")

    config_path = root / CONFIG_FILE
    if config_path.exists():
        load(config_path)  # a broken existing config is reported, never overwritten
    else:
        template = resources.files("ftctl").joinpath("templates/ftctl.yaml").read_text()
        write_text(config_path, template.replace("__MODEL__", model).replace("__BASE__", base))
        done.append(f"wrote {CONFIG_FILE}")

    lock_path = root / LOCK_FILE
    if lock_path.exists():
        lockfile.read(lock_path)  # corrupt -> error, never rewritten
    else:
        lockfile.write(lock_path, Lock())
        done.append(f"wrote {LOCK_FILE}")

    gi = root / ".gitignore"
    lines = gi.read_text().splitlines() if gi.exists() else []
    missing = [l for l in GITIGNORE_LINES if l not in lines]
    if missing:
        write_text(gi, "\n".join(lines + missing) + "\n")
        done.append("updated .gitignore")

    if not secret.path(root).exists() and not (lockfile.read(lock_path).model_extra or {}).get("tombstones"):
        secret.load(root)  # keys the hashes of user data (forget's tombstones, report ids); never committed
        done.append(f"created {secret.SECRET_FILE} (0600, git-ignored)")

    paths = [CONFIG_FILE, LOCK_FILE, ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore"]
    paths = [p for p in paths if (root / p).exists()]
    git(root, "add", "--", *paths)
    if git(root, "diff", "--cached", "--quiet", "--", *paths, check=False).returncode != 0:
        if git(root, "var", "GIT_COMMITTER_IDENT", check=False).returncode != 0:
            raise ConfigError("git has no identity to commit the workspace with",
                              hint='git config user.name "..." && git config user.email "..."')
        git(root, "commit", "--quiet", "--no-verify", "-m", "ftctl init", "--", *paths)
        done.append("committed")
    return {"workspace": str(root), "model": model, "done": done, "changed": bool(done)}
