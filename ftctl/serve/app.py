"""The FastAPI app: routes, bearer-token auth and errors in the CLI's JSON shape.

With a token configured, mutations need it as a bearer header, and so do the reads that return
examples (jobs and their results, reports, the dashboard); a browser carries it as a session
cookie set by the login form at /ui/login. /health, /metrics, /status and /versions stay open.

Reads call the public core functions the CLI calls, in this process, and answer with the JSON
text `ftctl --json` prints. Mutating verbs run the real command line in another process
(ftctl.serve.job_process), so the run lock, the JSON and .ftctl/log.jsonl are the CLI's own.
The rest has its own module: the queue worker's keeper (supervisor), the body limit
(body_limit), the parsed ftctl.yaml and models.lock (read_cache), a job as shown (job_view).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
import os
import stat
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPBearer
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ftctl.errors import LOCKED, FtctlError, NotFound, UsageError
from ftctl.lib.redact import redact
from ftctl.serve import job_process
from ftctl.serve import jobs as J
from ftctl.serve.body_limit import BodyLimit
from ftctl.serve.coalesce import Coalesce
from ftctl.serve.health import Health
from ftctl.serve.job_view import job_view as view
from ftctl.serve.read_cache import ReadCache
from ftctl.serve.requests import (DeployRequest, EvaluateRequest, FinetuneRequest, PromoteRequest,
                                  RollbackRequest)
from ftctl.serve.supervisor import Supervisor

# exit code -> HTTP status (README "Exit codes"): usage errors (a bad ref) are 422, a held lock 409
HTTP_STATUS = {0: 200, 1: 500, 2: 422, 3: 409, 4: 409, 5: 409, 6: 502}
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
# declares the bearer scheme in the OpenAPI schema (so /docs can send the token); checking it
# stays in `authorized`, which answers in the CLI's error shape rather than FastAPI's
bearer = HTTPBearer(auto_error=False, description="the token in the service's FTCTL_SERVE_TOKEN (serve.token_env)")


@dataclass
class Settings:
    root: Path
    token: str | None = None
    token_env: str = "FTCTL_SERVE_TOKEN"
    lock_wait: float = 0
    max_queue: int = 20
    loopback: bool = True  # bound to loopback only: Host headers are checked (DNS rebinding)


def cli_json(data: Any, status: int = 200) -> Response:
    """The text `ftctl --json` prints for ``data`` (ftctl.cli.main.App.emit)."""
    return Response(json.dumps(data, indent=2, default=str, ensure_ascii=False), status,
                    media_type="application/json")


def error_body(e: FtctlError) -> dict:
    """The CLI's --json error object, secrets redacted."""
    return {"error": redact(e.message), "hint": redact(e.hint) if e.hint else e.hint, "exit_code": e.exit_code}


class Unauthorized(FtctlError):
    exit_code = 2


class LoginRequired(Unauthorized):
    """A dashboard page asked for without the token: answered with the login form."""

    def __init__(self, path: str):
        super().__init__("this page shows examples: log in with the service's token")
        self.path = path


SESSION_COOKIE = "ftctl_session"
SESSION_SECONDS = 12 * 3600


def session_value(token: str) -> str:
    """What the dashboard's cookie holds: derived from the token, not the token (a cookie that
    leaks from a browser profile does not give the bearer token of the mutating routes)."""
    return hmac.new(token.encode(), b"ftctl-dashboard-session", "sha256").hexdigest()


def local_path(path: str | None) -> str:
    """Where the login form may send the browser back to: a path on this service, nothing else."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 300:
        return "/"
    return path


def create_app(settings: Settings, *, start_worker: bool = True) -> FastAPI:
    root = Path(settings.root).resolve()
    store = J.JobStore(root / ".ftctl" / "serve" / "jobs.sqlite")
    sup = Supervisor(root, store, lock_wait=settings.lock_wait, token_env=settings.token_env)
    health = Health(root, store, sup.alive)

    @asynccontextmanager
    async def lifespan(app):
        store.mark_interrupted()  # left running by a service that was killed
        from ftctl.serve.job_view import unscrubbed_withheld

        store.rewrite_results(unscrubbed_withheld)  # raw examples an older ftctl stored: gone from the disk
        task = None
        if start_worker:
            sup.start()
            task = asyncio.create_task(sup.watch())
        yield
        if task:
            task.cancel()
        await asyncio.to_thread(sup.stop)

    app = FastAPI(title="ftctl", version=_version(), lifespan=lifespan,
                  description="The ftctl loop over HTTP: every body is the JSON `ftctl --json` prints.")
    app.state.store = store
    app.add_middleware(BodyLimit)
    if settings.loopback:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    # CORS: no middleware, so browsers refuse cross-origin reads (off by default, as asked)

    cache = ReadCache(root)
    status_flights = Coalesce()

    def workspace():
        return cache.workspace()

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, e: LoginRequired):
        from ftctl.serve import dashboard

        return HTMLResponse(dashboard.login_page(e.path), 401)

    @app.exception_handler(FtctlError)
    async def _ftctl_error(request: Request, e: FtctlError):
        status = 401 if isinstance(e, Unauthorized) else 404 if isinstance(e, NotFound) else \
            HTTP_STATUS.get(e.exit_code, 500)  # an unknown version, model, job or report: 404
        resp = cli_json(error_body(e), status)
        if isinstance(e, Unauthorized):
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, e: RequestValidationError):
        # the CLI's error shape (not FastAPI's {"detail": [...]}): one message, a hint, the exit code
        problems = [_problem(err) for err in e.errors()]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return cli_json({"error": f"invalid request: {problems[0]}{more}",
                         "hint": "; ".join(problems[1:4]) or "see /docs for the request's schema",
                         "exit_code": 2}, 422)

    def authorized(request: Request, _scheme=Security(bearer)) -> None:
        if not settings.token:
            raise Unauthorized("mutating routes are disabled: the service has no token",
                               hint=f"set {settings.token_env} in the service's environment and restart it")
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            raise Unauthorized("missing or wrong bearer token", hint="send `Authorization: Bearer $TOKEN`")

    def may_read(request: Request) -> bool:
        """Reads that return examples need the token when one is configured: the bearer header,
        or the dashboard's session cookie (reads only: a cookie never authorises a mutation, so
        another site cannot make a logged-in browser start a job)."""
        if not settings.token:
            return True
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE) or ""
        return hmac.compare_digest(cookie.encode(), session_value(settings.token).encode())

    def reader(request: Request, _scheme=Security(bearer)) -> None:
        if not may_read(request):
            raise Unauthorized("this route returns examples: it needs the token",
                               hint="send `Authorization: Bearer $TOKEN` (in a browser: log in at /ui/login)")

    def page_reader(request: Request) -> None:
        if not may_read(request):
            raise LoginRequired(request.url.path)

    def validate(ws, req) -> None:
        """The CLI's own checks, before anything is queued: a bad ref is the CLI's message (422)."""
        from ftctl.registry.lineage import resolve_ref

        model = getattr(req, "model", None)
        if getattr(req, "set", None):  # the overrides must give a valid config, as `--set` checks
            from ftctl.registry.workspace import Workspace

            ws = Workspace(ws.root, tuple(req.set))
        ws.model(model)
        for ref in req.refs():
            resolve_ref(ws, ref, model)

    def enqueue(kind: str, req, *, resumed_from: str | None = None) -> Response:
        ws = workspace()
        validate(ws, req)
        if store.counts().get(J.QUEUED, 0) >= settings.max_queue:
            return cli_json({"error": f"{settings.max_queue} jobs are already queued", "hint": "retry later",
                             "exit_code": LOCKED}, 429)
        job = store.add(kind, req.model_dump(by_alias=True), req.argv(), resumed_from=resumed_from)
        return cli_json(job_view(job), 202)

    async def run_now(kind: str, req) -> Response:
        """deploy/promote/rollback: short, answered when done, with the CLI's JSON and exit code."""
        ws = workspace()
        validate(ws, req)
        job = store.add(kind, req.model_dump(by_alias=True), req.argv(), state=J.RUNNING)
        row = await asyncio.to_thread(job_process.run_job, store, job, root, lock_wait=settings.lock_wait,
                                      token_env=settings.token_env)
        body = row["result"] if row["result"] is not None else {
            "error": f"`ftctl {kind}` ended with exit code {row['exit_code']} and no output",
            "hint": f"see GET /jobs/{row['id']}", "exit_code": row["exit_code"]}
        return cli_json(body, HTTP_STATUS.get(row["exit_code"], 500))

    def job_view(job: dict, log_lines: int = 20) -> dict:
        return view(job, root, store, log_lines)

    def get_job(job_id: str) -> dict:
        job = store.get(job_id) if len(job_id) <= 32 and job_id.isalnum() else None
        if not job:
            raise NotFound(f"no job {job_id[:40]!r}", hint="GET /jobs lists them")
        return job

    # --- reads -------------------------------------------------------------------------------

    @app.get("/health")
    async def get_health():
        code, body = await asyncio.to_thread(health.report)
        return cli_json(body, code)

    @app.get("/metrics")
    def get_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ftctl.serve.metrics import FtctlCollector

        registry = CollectorRegistry()
        registry.register(FtctlCollector(workspace, store))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    def get_status(model: str | None = Query(None, max_length=64)):
        from ftctl.serve.dashboard import deployment_status

        # requests at once share one reading (each gets one begun after it arrived)
        return cli_json(status_flights(model, lambda: deployment_status(workspace(), model)))

    @app.get("/versions")
    def get_versions(model: str | None = Query(None, max_length=64)):
        from ftctl.registry.lineage import version_rows

        ws = workspace()
        if model:
            ws.model(model)
        return cli_json(version_rows(ws, model))

    @app.get("/versions/{ref}")
    def get_version(ref: str, model: str | None = Query(None, max_length=64)):
        from ftctl.registry.lineage import show

        return cli_json(show(workspace(), ref[:80], model))

    def report_files(model: str) -> dict[str, Path]:
        """The model's reports: regular files directly in its reports folder, never a symlink
        (nor a folder reached through one), so nothing outside reports/ is ever served."""
        ws = workspace()
        ws.model(model)  # a configured model name: no path characters
        d = ws.reports_dir(model)
        if not d.is_dir() or d.resolve() != d.absolute():
            return {}
        with os.scandir(d) as entries:
            return {e.name: Path(e.path) for e in entries if e.is_file(follow_symlinks=False)}

    @app.get("/reports/{model}", dependencies=[Depends(reader)])
    def list_reports(model: str):
        files = sorted(report_files(model).items())
        return cli_json({"model": model, "reports": [
            {"name": n, "url": f"/reports/{model}/{n}", "bytes": p.lstat().st_size} for n, p in files]})

    @app.get("/reports/{model}/{name}", dependencies=[Depends(reader)])
    def get_report(model: str, name: str):
        listed = report_files(model)  # only a name listed there: never a client path joined onto ours
        if name not in listed:
            raise NotFound(f"no report {name[:80]!r} of model {model!r}", hint=f"GET /reports/{model} lists them")
        try:  # O_NOFOLLOW: a file swapped for a symlink since the listing is refused, not followed
            fd = os.open(listed[name], os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise NotFound(f"no report {name[:80]!r} of model {model!r}", hint=f"GET /reports/{model} lists them") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise NotFound(f"no report {name[:80]!r} of model {model!r}")
            body = f.read()
        return Response(body, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")

    @app.get("/jobs", dependencies=[Depends(reader)])
    def list_jobs(limit: int = Query(50, ge=1, le=500)):
        return cli_json([job_view(j, 0) for j in store.list(limit)])

    @app.get("/jobs/{job_id}", dependencies=[Depends(reader)])
    @app.get("/finetune/status/{job_id}", dependencies=[Depends(reader)])
    def job_status(job_id: str, log_lines: int = Query(20, ge=0, le=500)):
        return cli_json(job_view(get_job(job_id), log_lines))

    # --- mutations (bearer token) -------------------------------------------------------------

    @app.post("/finetune/start", status_code=202, dependencies=[Depends(authorized)])
    def finetune_start(req: FinetuneRequest):
        return enqueue(req.kind, req)

    @app.post("/evaluate", status_code=202, dependencies=[Depends(authorized)])
    def evaluate(req: EvaluateRequest):
        validate(workspace(), req)  # before anything is written for it
        req.write_sources(workspace().cache_dir)
        return enqueue("evaluate", req)

    @app.post("/jobs/{job_id}/cancel", dependencies=[Depends(authorized)])
    def cancel(job_id: str):
        get_job(job_id)
        return cli_json(job_view(store.request_cancel(job_id)))

    @app.post("/jobs/{job_id}/resume", status_code=202, dependencies=[Depends(authorized)])
    def resume(job_id: str):
        job = job_view(get_job(job_id), 0)
        if not job["resumable"]:
            raise UsageError(f"job {job_id} has no unfinished training run to resume",
                             hint="only an interrupted, cancelled or failed train/cycle job whose run did not finish")
        p = job["params"]
        req = FinetuneRequest(kind="train", model=p.get("model"), resume=True, set=p.get("set") or [])
        return enqueue("train", req, resumed_from=job_id)

    @app.post("/deploy", dependencies=[Depends(authorized)])
    async def deploy(req: DeployRequest):
        return await run_now("deploy", req)

    @app.post("/promote", dependencies=[Depends(authorized)])
    async def promote(req: PromoteRequest):
        return await run_now("promote", req)

    @app.post("/rollback", dependencies=[Depends(authorized)])
    async def rollback(req: RollbackRequest):
        return await run_now("rollback", req)

    # --- the dashboard -------------------------------------------------------------------------

    from ftctl.serve import dashboard

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(page_reader)])
    def index():
        return dashboard.page(workspace(), store, job_view)

    @app.get("/ui/login", response_class=HTMLResponse)
    def login_form(next: str | None = Query(None, max_length=300)):
        return dashboard.login_page(local_path(next), token=bool(settings.token))

    @app.post("/ui/login")
    async def login(request: Request):
        """The dashboard's way to carry the token: the form posts it once, the answer sets a
        session cookie (HttpOnly, SameSite=Strict) derived from it."""
        from urllib.parse import parse_qs

        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        given, to = (form.get("token") or [""])[0], local_path((form.get("next") or ["/"])[0])
        if not settings.token or not hmac.compare_digest(given.encode(), settings.token.encode()):
            return HTMLResponse(dashboard.login_page(to, error="wrong token" if settings.token else None,
                                                     token=bool(settings.token)), 401)
        resp = Response(status_code=303, headers={"Location": to})
        resp.set_cookie(SESSION_COOKIE, session_value(settings.token), max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return resp

    @app.post("/ui/logout")
    def logout():
        resp = Response(status_code=303, headers={"Location": "/ui/login"})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/ui/jobs", response_class=HTMLResponse, dependencies=[Depends(page_reader)])
    def jobs_fragment():
        return dashboard.jobs_fragment(store, job_view)

    @app.get("/ui/jobs/{job_id}", response_class=HTMLResponse, dependencies=[Depends(page_reader)])
    def job_page(job_id: str):
        return dashboard.job_page(job_view(get_job(job_id), 40))

    @app.get("/ui/versions/{ref}", response_class=HTMLResponse, dependencies=[Depends(page_reader)])
    def version_page(ref: str, model: str | None = Query(None, max_length=64)):
        from ftctl.registry.lineage import show

        return dashboard.version_page(show(workspace(), ref[:80], model))

    return app


def _problem(err: dict) -> str:
    """One pydantic/FastAPI validation error as the CLI words config errors: ``where: what``."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def _version() -> str:
    from ftctl import __version__

    return __version__
