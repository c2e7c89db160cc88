"""Who listens on a TCP port: a deployer asks before it starts a server there.

psutil reads the kernel's socket table and maps each listening socket to its process (what
``ss -ltnp`` shows), so an error can name the stranger on a port, and a deployer can tell its
own server (or a child of it) from someone else's.
"""

from __future__ import annotations

import socket


def listeners(port: int) -> list[int]:
    """Pids listening on TCP ``port`` (any address); empty when none, or none ftctl may see."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    return sorted({c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   and c.pid})


def describe(pid: int) -> str:
    """``pid 123 (python3 tiny_server.py --port 8081)``, shortened; the pid alone if it is gone."""
    import psutil

    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return f"pid {pid}"
    return f"pid {pid} ({cmd[:120] + ('...' if len(cmd) > 120 else '')})" if cmd else f"pid {pid}"


def in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on ``port`` (binding fails)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def family(pid: int) -> set[int]:
    """``pid`` and its descendants (a pm2 app's script may start the server as a child)."""
    import psutil

    out = {pid}
    try:
        out.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    except (psutil.Error, OSError):
        pass
    return out


def holder(port: int, host: str = "127.0.0.1", own: set[int] = frozenset()) -> str | None:
    """Who holds ``port`` other than the pids in ``own`` (and their children): a description, or
    None when the port is free or held only by them."""
    pids = listeners(port)
    if not pids:
        return "a process ftctl cannot name" if in_use(port, host) else None
    mine = set().union(*(family(p) for p in own)) if own else set()
    strangers = [p for p in pids if p not in mine]
    return ", ".join(describe(p) for p in strangers) or None


def free_port() -> int:
    """A free loopback port, for a server only ftctl talks to."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
