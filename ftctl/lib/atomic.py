"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A crash or a full disk at any point leaves either the old file or the new one, never a mix.
Modes: mkstemp makes 0600 files, so a new file gets the umask's mode (0644 under umask 022, as
``open()`` would give) and a rewritten file keeps its own: a teammate or the serving user can
read what ftctl writes on a shared server.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode(path))
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def umask() -> int:
    """The process umask, read without changing it (os.umask() must set it to read it, and a
    thread creating a file meanwhile would get the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the classic way
    os.umask(mask)
    return mask


def file_mode(path: Path) -> int:
    """The mode a (re)written ``path`` gets: its current one, or what ``open()`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


def make_temp_dir(prefix: str, dir: Path) -> Path:
    """``tempfile.mkdtemp`` (0700) with the mode ``mkdir`` would give: it becomes a visible directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(path, 0o777 & ~umask())
    return path


def write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path):
    """A small JSON state file, or None when it is missing, empty or half-written by a crash."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (FileNotFoundError, ValueError):
        return None
