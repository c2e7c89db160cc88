"""`ftctl serve`: the HTTP service (FastAPI + uvicorn) over the same core verbs."""

from __future__ import annotations

import ipaddress
import os

import click

from ftctl.cli.main import pass_app
from ftctl.errors import FtctlError, UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


@click.command()
@click.option("--host", help="Address to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: serve.port, 8765).")
@click.option("--lock-wait", type=click.FloatRange(min=0), help="Seconds a job waits for another run's lock "
              "(default: serve.lock_wait; 0 refuses at once).")
@pass_app
def serve(app, host, port, lock_wait):
    """Serve the API, /metrics and the dashboard; jobs run in a separate worker process.

    Mutating routes need `Authorization: Bearer $FTCTL_SERVE_TOKEN` (serve.token_env names the
    variable); without a token the service is read-only and listens on loopback only.
    """
    import contextlib

    from filelock import FileLock, Timeout

    ws = app.workspace()
    cfg = ws.config.serve
    host, port = host or cfg.host, port or cfg.port
    token = os.environ.get(cfg.token_env) or None
    if not is_loopback(host) and not token:
        raise UsageError(f"refusing to listen on {host} without a token",
                         hint=f"set {cfg.token_env} (mutating routes need it), or listen on 127.0.0.1")
    from ftctl.serve.app import Settings, create_app

    state = ws.state_dir / "serve"
    state.mkdir(exist_ok=True)
    service_lock = FileLock(str(state / "service.lock"))
    try:
        service_lock.acquire(timeout=0)
    except Timeout:
        raise FtctlError("another `ftctl serve` runs on this workspace",
                         hint="stop it first (one service owns the job queue)", exit_code=4) from None
    settings = Settings(ws.root, token, cfg.token_env, cfg.lock_wait if lock_wait is None else lock_wait,
                        cfg.max_queue, loopback=is_loopback(host))
    import uvicorn

    app.say(f"ftctl serve: http://{host}:{port}/ (workspace {ws.root}"
            + ("" if token else "; read-only: no token") + ")")
    with contextlib.ExitStack() as stack:
        stack.callback(service_lock.release)
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                    server_header=False, proxy_headers=False)
