"""The nginx side of a canary: a generated include with two upstreams and a split_clients.

The user's server block proxies to the variable this file defines, once:
    include /etc/nginx/ftctl/<model>.conf;          # in the http block
    location / { proxy_pass http://$ftctl_<model>; }

ftctl rewrites only the include (atomically), checks it with the test command, and reloads
nginx; a reload is graceful, so requests in flight finish on the old workers.

With an access log configured, the include also logs every request of this model (time, which
upstream, status, request time) in the format of ftctl_plugins.deployers.access_log, which reads
it back as the canary's error-rate evidence. nginx does not inherit ``access_log`` into a server
or location block that sets its own: such a block needs the same line (docs/deploy.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from ftctl.api import ExternalToolError, run_tool, write_text
from ftctl_plugins.deployers.access_log import tag

HINT = "install it with scripts/install_system.sh (apt-get install nginx-light)"


def variable(model: str) -> str:
    """nginx variable and upstream names allow no '-': model names may hold one."""
    return tag(model)


LOG_PATH = re.compile(r"/[^\s;{}'\"$\\]+")  # absolute, and nothing nginx would read as syntax


def log_path(path: str) -> str:
    """``path`` if nginx can take it as an access_log file as it stands, else ValueError."""
    if not LOG_PATH.fullmatch(path):
        raise ValueError(f"access log {path!r}: an absolute path without spaces, quotes, ; {{ }} or $")
    return path


# nginx variables and plain characters: the key goes inside "..." in the include, so a quote,
# backslash, space or newline would end the string and let the rest be read as configuration
SPLIT_KEY = re.compile(r"[A-Za-z0-9_$.:@{}-]{1,200}")


def split_key(key: str) -> str:
    """``key`` if it is a safe split_clients key with at least one variable, else ValueError."""
    if not SPLIT_KEY.fullmatch(key) or "$" not in key:
        raise ValueError(f"split key {key!r}: nginx variables and letters, digits, _ . : @ {{ }} - only "
                         "(e.g. $request_id, $remote_addr, $http_x_user_id)")
    return key


def render(model: str, stable_port: int, canary_port: int | None = None, percent: int = 0,
           *, host: str = "127.0.0.1", key: str = "$request_id", access_log: str | None = None) -> str:
    var = variable(model)
    split_key(key)
    lines = [f"# written by ftctl for model {model}: do not edit (ftctl deploy/promote/rollback)",
             f"upstream {var}_stable {{ server {host}:{stable_port}; keepalive 8; }}"]
    if access_log:
        log_path(access_log)
        # $proxy_host is the upstream a request went to (..._stable / ..._canary): only this
        # model's requests are logged, each with the side that answered it (access_log.line)
        lines += [f"log_format {var} '$msec $proxy_host $status $request_time';",
                  f"map $proxy_host ${var}_logged {{ {var}_stable 1; {var}_canary 1; default 0; }}",
                  f"access_log {access_log} {var} if=${var}_logged;"]
    if canary_port and percent > 0:
        lines.append(f"upstream {var}_canary {{ server {host}:{canary_port}; keepalive 8; }}")
        share = "*" if percent >= 100 else f"{percent}%"
        rest = [] if percent >= 100 else [f"    * {var}_stable;"]
        lines += [f'split_clients "{key}" ${var} {{', f"    {share} {var}_canary;", *rest, "}"]
    else:
        lines += [f'split_clients "{key}" ${var} {{', f"    * {var}_stable;", "}"]
    return "\n".join(lines) + "\n"


def apply(include: Path, text: str, test_command: list[str], reload_command: list[str]) -> bool:
    """Write the include, test, reload. A failing test restores the old include. Returns changed."""
    include = Path(include)
    old = include.read_text(encoding="utf-8") if include.exists() else None
    if old == text:
        return False
    write_text(include, text)
    try:
        if test_command:
            run_tool(test_command, timeout=30, hint=HINT)
        run_tool(reload_command, timeout=30, hint=HINT)
    except ExternalToolError:
        if old is None:
            include.unlink(missing_ok=True)
        else:
            write_text(include, old)
        raise
    return True
