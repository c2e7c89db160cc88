"""The public port of the lora_swap server: a small router in front of its llama-server.

The llama-server listens on an internal loopback port. For completion requests the router picks
a version (stable or canary) and writes llama-server's per-request adapter field into the body,
``"lora": [{"id": N, "scale": S}, ...]`` with every loaded adapter listed (the chosen one at its
scale, the others at 0: recent llama-server builds treat an unlisted adapter as 0, older ones
as its global scale, so listing all means the same in both). The answer names the version that
produced it: ``model`` in the JSON body and in every streamed SSE chunk, and ``X-Served-Model``.
Every other path (/health, /metrics, /lora-adapters, /props, /v1/models...) passes through as is.

With ``log``, each routed completion is appended to an access log (access_log.line: time, side,
status, seconds to the last byte): ``ftctl canary check``'s error rate per version.

Which version: a stable hash of the OpenAI ``user`` field (or the ``X-User-Id`` header), so a
user sticks to one version, else a hash of a request counter; the canary answers ``percent`` of
them. The routing comes from the deployer's state file (.ftctl/lora-swap/<model>.json, written
atomically), re-read when it changes: no control endpoint that anyone on the port could call.

Hand-written on starlette + httpx (both well kept, in the deploy extra) because a reverse proxy
(nginx's split_clients) can split by a hash but cannot rewrite JSON bodies or SSE chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ftctl_plugins.deployers import access_log

COMPLETIONS = frozenset({"/completion", "/completions", "/v1/completions", "/v1/chat/completions",
                         "/chat/completions"})
# what the public port passes on (path -> methods); everything else is llama-server's own business
PUBLIC = {**{p: {"POST"} for p in COMPLETIONS},
          **{p: {"POST"} for p in ("/embedding", "/embeddings", "/v1/embeddings")},
          **{p: {"GET", "HEAD"} for p in ("/health", "/v1/health", "/metrics", "/models", "/v1/models")}}
MAX_BODY = 8 * 1024 * 1024  # a chat request with a long context is well under this
# hop-by-hop (RFC 9110 7.6.1) or recomputed here; accept-encoding so bodies come back plain to rewrite
DROP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "transfer-encoding", "upgrade", "content-length", "host", "accept-encoding"})
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


def pick(key: str, percent: int) -> bool:
    """True when ``key`` falls in the canary's ``percent`` share. sha256, not ``hash()``: Python
    salts that per process, and a user must keep its version across server restarts."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100 < percent


@dataclass(frozen=True)
class Target:
    side: str  # stable or canary
    label: str  # the id answers carry, e.g. assistant@v1.1
    lora: list[dict]  # the request's "lora" field


class Table:
    """The routing in the state file, reloaded when the file is replaced."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: tuple | None = ()
        self.stable: Target | None = None
        self.canary: Target | None = None
        self.percent = 0

    def refresh(self) -> Table:
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self.seen:
            self.seen = seen
            try:
                self.load(json.loads(self.path.read_text()) if seen else {})
            except (OSError, ValueError, TypeError, KeyError) as e:  # keep the last good routing
                print(f"lora_router: cannot read {self.path}: {e}; keeping the previous routing", file=sys.stderr)
        return self

    def load(self, state: dict) -> None:
        adapters, scale = state.get("adapters") or [], float(state.get("scale", 1.0))

        def target(slot: str) -> Target | None:
            entry = state.get(slot)
            if not entry or entry["path"] not in adapters:
                return None
            return Target(slot, entry["label"], [{"id": i, "scale": scale if p == entry["path"] else 0.0}
                                           for i, p in enumerate(adapters)])

        self.stable, self.canary = target("stable"), target("canary")
        self.percent = int(state.get("canary_percent", 0)) if self.canary else 0

    def choose(self, key: str) -> Target | None:
        """None while nothing is deployed: the request goes on unchanged (the global scales)."""
        if self.canary and self.percent and pick(f"{self.canary.label}|{key}", self.percent):
            return self.canary  # salted with the canary: each trial draws its own users
        return self.stable


def user_key(body: dict, headers) -> str | None:
    user = body.get("user")
    return user if isinstance(user, str) and user else headers.get("x-user-id") or None


def relabel(obj, label: str):
    if isinstance(obj, dict) and "error" not in obj:
        obj["model"] = label
    return obj


def relabel_sse(line: str, label: str) -> str:
    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
        return line
    try:
        return "data: " + json.dumps(relabel(json.loads(line[5:]), label), ensure_ascii=False)
    except ValueError:
        return line


def refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "type": "invalid_request_error", "message": message}}, status)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def app(upstream: str, state_file: Path, log: Path | None = None, max_body: int = MAX_BODY) -> Starlette:
    """The router for the llama-server at ``upstream`` (``http://127.0.0.1:PORT``); the model is
    the state file's name."""
    table = Table(state_file)
    counter = itertools.count()
    model = state_file.stem
    # generation can take minutes: no read timeout, only a connect one
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(None, connect=5))

    def logged(target: Target | None, status: int, started: float, then=None):
        """Record the routed request once its answer is complete (then close the upstream response)."""
        async def done():
            if then is not None:
                await then()
            if log and target:
                access_log.append(log, access_log.line(model, target.side, status, time.monotonic() - started))
        return BackgroundTask(done)

    async def proxy(request: Request) -> Response:
        started = time.monotonic()
        allowed = PUBLIC.get(request.url.path)
        if allowed is None:
            return refusal(404, f"{request.url.path} is not served on this port (completions, embeddings, "
                                "models, health and metrics are)")
        if request.method not in allowed:
            return refusal(405, f"{request.method} {request.url.path} is not served on this port")
        body = await read_body(request, max_body)
        if body is None:
            return refusal(413, f"the request body is over {max_body} bytes")
        target = None
        if request.method == "POST" and request.url.path in COMPLETIONS:
            try:
                data = json.loads(body)
            except ValueError:
                data = None  # llama-server answers it with its own error
            if isinstance(data, dict):
                key = user_key(data, request.headers) or f"#{next(counter)}"
                if target := table.refresh().choose(key):
                    data["lora"] = target.lora
                    body = json.dumps(data).encode()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP]
        req = client.build_request(request.method, request.url.path, params=request.url.query,
                                   headers=headers, content=body)
        try:
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as e:
            return JSONResponse({"error": {"code": 502, "type": "unavailable_error",
                                           "message": f"the llama-server behind this port did not answer: {e}"}},
                                502, background=logged(target, 502, started))
        out = {k: v for k, v in resp.headers.items() if k.lower() not in DROP}
        ctype = resp.headers.get("content-type", "")
        if target:
            out["X-Served-Model"] = target.label
        if target and ctype.startswith("text/event-stream"):
            async def events():
                async for line in resp.aiter_lines():  # one chunk per line: the stream stays incremental
                    yield relabel_sse(line, target.label) + "\n"
            return StreamingResponse(events(), resp.status_code, out,
                                     background=logged(target, resp.status_code, started, resp.aclose))
        if target and ctype.startswith("application/json") and resp.status_code < 400:
            raw = await resp.aread()
            await resp.aclose()
            try:
                raw = json.dumps(relabel(json.loads(raw), target.label), ensure_ascii=False).encode()
            except ValueError:
                pass
            return Response(raw, resp.status_code, out, background=logged(target, resp.status_code, started))
        return StreamingResponse(resp.aiter_raw(), resp.status_code, out,
                                 background=logged(target, resp.status_code, started, resp.aclose))

    @contextlib.asynccontextmanager
    async def lifespan(_):
        async with client:
            yield

    return Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
