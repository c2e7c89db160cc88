"""Live feedback: read a model's sources since a moment, without curating or recording anything.

`canary check` and `drift` judge what users say now; they must not wait for (or change) a
collected snapshot. Rows are streamed; rejected rows are counted by reason, like collect does.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from ftctl.records import Example, Reject


def scan(ws, model: str, since: str | None, visit: Callable[[Example], None], log=print) -> dict[str, Any]:
    """Call ``visit`` on every Example newer than ``since`` (ISO time) from the model's sources."""
    from ftctl import plugins

    from ftctl.lib.times import parse_time

    mc = ws.model(model)
    read, rejected = 0, Counter()
    cutoff = parse_time(since)  # compared as times: a source may answer in its own time zone
    for i, src in enumerate(mc.sources):
        plugin = plugins.build("source", src.kind, src.plugin_config(), ws.context(mc.name, log, instance=src.name),
                               key=f"models.{mc.name}.sources[{i}]")
        for item in plugin.read(since):
            read += 1
            if isinstance(item, Reject):
                rejected[item.reason] += 1
            elif cutoff is None or item.created_at is None or parse_time(item.created_at) > cutoff:
                visit(item)
    return {"read": read, "rejected": dict(rejected)}


def score(ex: Example, signal: str) -> float | None:
    """The row's rating (1..5) or reward (-1..+1; a thumbs up/down counts as +1/-1)."""
    if signal == "rating":
        return ex.rating
    if ex.reward is not None:
        return ex.reward
    return _rewarder()(ex)[0]  # the reward hooks (the built-in table last): thumbs, edit, regenerate, ...


@functools.cache
def _rewarder():
    from ftctl import plugins

    return plugins.rewarder()
