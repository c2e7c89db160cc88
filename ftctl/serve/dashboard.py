"""The dashboard at `/`: server-rendered Jinja2 pages (no JavaScript build step).

Everything shown comes from the same core reads as the JSON routes; a few lines of inline
JavaScript only re-fetch the server-rendered jobs fragment for live progress.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from markupsafe import Markup

from ftctl.errors import FtctlError

SVG_RE = re.compile(r"<svg\b.*?</svg>", re.S)


@cache
def _env():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["num"] = lambda x: "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))
    return env


def _render(name: str, **ctx) -> str:
    return _env().get_template(name).render(**ctx)


def page(ws, store, job_view) -> str:
    from ftctl.registry.lineage import version_rows

    versions = version_rows(ws)
    model = ws.config.default_model
    return _render("dashboard.html", model=model, versions=list(reversed(versions)),
                   key=ws.model(model).eval.gate.metric, status=_status(ws, model),
                   comparison=_latest_comparison(ws, model), jobs=[job_view(j, 0) for j in store.list(20)])


def login_page(next_path: str, error: str | None = None, token: bool = True) -> str:
    return _render("login.html", next=next_path, error=error, token=token)


def jobs_fragment(store, job_view) -> str:
    return _render("jobs.html", jobs=[job_view(j, 0) for j in store.list(20)])


def job_page(job: dict) -> str:
    return _render("job.html", job=job)


def version_page(entry: dict) -> str:
    return _render("version.html", v=entry)


def deployment_status(ws, model: str | None) -> dict:
    """`ftctl status`'s core function, quiet."""
    from ftctl.deploy import rollout as core

    return core.status(ws, model, log=lambda _m: None)


def _status(ws, model: str) -> dict:
    try:
        return deployment_status(ws, model)
    except FtctlError as e:
        lock = ws.read_lock().models.get(model)
        dep = lock.deployment if lock else None
        return {"model": model, "stable": dep.stable if dep else None, "canary": dep.canary.model_dump() if dep and dep.canary else None,
                "apps": [], "error": e.message}


def _latest_comparison(ws, model: str) -> dict | None:
    """The newest recorded comparison (models.lock `evals`), with the first plot of its report."""
    state = ws.read_lock().models.get(model)
    if not state:
        return None
    entries = [(e.get("time") or "", v, e) for v, ve in state.versions.items() for e in ve.evals if e.get("against")]
    if not entries:
        return None
    _, version, e = max(entries, key=lambda t: t[0])
    plot = None
    report = ws.root / e["report"] if e.get("report") else None
    if report and report.is_file() and report.resolve().is_relative_to(ws.reports_dir(model).resolve()):
        m = SVG_RE.search(report.read_text(encoding="utf-8"))
        plot = Markup(m.group(0)) if m else None  # our own report's matplotlib SVG
    return {**e, "b": version, "a": e["against"], "plot": plot,
            "report_url": "/" + e["report"] if e.get("report") else None}
