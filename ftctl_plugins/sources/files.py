"""Helpers shared by the file sources: finding the files, remembering the newest row."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ftctl.api import ConfigError, Example


def expand(root: Path, pattern: str, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, a directory (its files with ``suffixes``, recursively) or a glob; sorted."""
    base = Path(pattern)
    path = base if base.is_absolute() else root / base
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    else:
        anchor = Path(path.anchor) if base.is_absolute() else root
        rel = str(path.relative_to(anchor))
        files = sorted(p for p in anchor.glob(rel) if p.is_file())
    if not files and not path.is_dir():
        raise ConfigError(f"no files match {pattern!r}", hint=f"paths are relative to the workspace {root}")
    return files


def display(root: Path, path: Path) -> str:
    """How rejects name a file: relative to the workspace when inside it."""
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


class Watermarked:
    """File sources re-read their files; the watermark is the newest ``created_at`` seen, and
    the core filters rows at or before it as already collected."""

    _newest: datetime | None = None

    @property
    def source(self) -> str:
        return self.source_name

    def seen(self, ex: Example) -> Example:
        if ex.created_at and (self._newest is None or ex.created_at > self._newest):
            self._newest = ex.created_at
        return ex

    def watermark(self) -> str | None:
        return self._newest.isoformat() if self._newest else None
