"""ftctl.yaml and models.lock parsed once per change of the file (its stat), not per request:
YAML parsing dominated the read routes under load. Any change on disk is seen at once."""

from __future__ import annotations

import threading
from pathlib import Path

from ftctl.registry.workspace import Workspace


class ReadCache:
    def __init__(self, root: Path):
        self.root = root
        self._ws = None
        self._ws_key = None
        self._lock = None
        self._lock_key = None
        self._mutex = threading.Lock()

    @staticmethod
    def _key(path: Path):
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def workspace(self) -> Workspace:
        cache = self

        class Cached(Workspace):
            def read_lock(self):
                return cache.read_lock(lambda: Workspace.read_lock(self))

        with self._mutex:
            key = self._key(self.root / "ftctl.yaml")
            if self._ws is None or key != self._ws_key:
                self._ws, self._ws_key = Cached(self.root), key
            return self._ws

    def read_lock(self, load):
        with self._mutex:
            key = self._key(self.root / "models.lock")
            if self._lock is None or key != self._lock_key:
                self._lock, self._lock_key = load(), key
            return self._lock
