"""The routers' record of which side answered each request: the canary's error-rate evidence.

One line per request, written by whichever router splits the traffic (nginx's ``log_format`` in
the include, or the lora_swap router), read back by :func:`read`:

    <epoch seconds> <tag>_<side> <status> <request seconds>

``tag`` names the model (:func:`tag`), ``side`` is stable or canary. Lines arrive in the order
requests finish, so the file is (nearly) time-ordered and a check bisects to its stage instead
of reading the whole history.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from ftctl.api import ExternalToolError, Traffic

SIDES = ("stable", "canary")


def tag(model: str) -> str:
    """A model's name in the log (also nginx's variable and upstream prefix: no '-' allowed there)."""
    return "ftctl_" + model.replace("-", "_")


def line(model: str, side: str, status: int, seconds: float, at: float | None = None) -> str:
    """One request, as nginx's ``'$msec $proxy_host $status $request_time'`` writes it."""
    return f"{time.time() if at is None else at:.3f} {tag(model)}_{side} {status} {seconds:.3f}\n"


def append(path: Path, text: str) -> None:
    """Open, append, close: a rotated log (renamed away by logrotate) is followed, not written on."""
    with open(path, "a", encoding="ascii") as f:
        f.write(text)


def read(path: Path, model: str, since: float) -> dict[str, Traffic]:
    """Requests, 5xx answers and median request time per side since ``since`` (epoch seconds).
    A missing log means nothing was logged yet; an unreadable one is an ExternalToolError."""
    prefix = tag(model).encode() + b"_"
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    errors = dict.fromkeys(SIDES, 0)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return {}
    except OSError as e:  # a directory, no permission
        raise ExternalToolError(f"cannot read the access log {path}: {e.strerror}",
                                hint="point it at the file the router writes, readable by ftctl") from e
    with f:
        _seek_to(f, since)
        for raw in f:
            parts = raw.split()
            if len(parts) != 4 or not parts[1].startswith(prefix):
                continue  # another model's line, another format, or a torn last line
            try:
                at, side = float(parts[0]), parts[1][len(prefix):].decode()
                status, seconds = int(parts[2]), float(parts[3])
            except ValueError:
                continue
            if at < since or side not in times:
                continue
            times[side].append(seconds)
            errors[side] += status >= 500
    return {side: Traffic(requests=len(t), errors=errors[side],
                          p50_ms=round(1000 * statistics.median(t), 1) if t else None)
            for side, t in times.items()}


def _seek_to(f, since: float, margin: float = 60.0) -> None:
    """Bisect to a line shortly before ``since``; ``margin`` seconds of slack keep a long request
    that finished (and was logged) late from being skipped."""
    lo, hi = 0, os.fstat(f.fileno()).st_size
    while hi - lo > 4096:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # to the start of the next whole line
        try:
            at = float(f.readline().split(maxsplit=1)[0])
        except (ValueError, IndexError):
            hi = mid
            continue
        if at < since - margin:
            lo = mid
        else:
            hi = mid
    f.seek(lo)
    if lo:
        f.readline()
