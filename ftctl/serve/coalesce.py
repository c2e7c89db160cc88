"""Concurrent reads that ask the same question share one answer: a request that arrives while the
answer is being computed waits for the computation that starts after it arrived, together with
every other request that arrived meanwhile (never an answer begun before it came: no staleness).

GET /status probes each app's health and reads the config, the lock and the ecosystem file (~2 ms
of CPU); fifty dashboards or monitors polling at once cost fifty of those, and their threads
contend for the GIL. The standard library has no such "single flight"; it is a few lines here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class Coalesce:
    def __init__(self):
        self._mutex = threading.Lock()
        self._running: dict[Hashable, Future] = {}  # the computation under way, per question
        self._next: dict[Hashable, Future] = {}  # the one to start once it ends (joined meanwhile)

    def __call__(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._mutex:
            running, joined = self._running.get(key), self._next.get(key)
            if running is None:  # nothing under way: compute now
                mine = self._running[key] = Future()
                wait_for = None
            elif joined is None:  # be the next computation, after the one under way (it began before us)
                mine = self._next[key] = Future()
                wait_for = running
        if running is not None and joined is not None:  # the next computation is already asked for
            return joined.result()
        if wait_for is not None:
            try:
                wait_for.result()
            except BaseException:  # noqa: BLE001,S110 - its error is its requests'; ours is computed anew
                pass
        try:
            result, error = compute(), None
        except BaseException as e:  # noqa: BLE001 - handed to every request that shares it
            result, error = None, e
        with self._mutex:  # the next one starts only once it is promoted: nobody joins it after
            nxt = self._next.pop(key, None)
            if nxt is not None:
                self._running[key] = nxt  # its computer waits on `mine`, set just below
            else:
                del self._running[key]
        if error is not None:
            mine.set_exception(error)
            raise error
        mine.set_result(result)
        return result
