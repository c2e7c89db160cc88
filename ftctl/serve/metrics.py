"""GET /metrics: Prometheus text, computed at scrape time from models.lock, the job store,
the latest data card and .ftctl/log.jsonl (prometheus_client's custom-collector pattern: the
registry and the store stay the single source of truth; nothing is counted twice)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, float("inf"))


class FtctlCollector:
    def __init__(self, workspace, store):
        self.workspace = workspace  # () -> Workspace (the API's cached reads)
        self.store = store

    def collect(self):
        ws = self.workspace()
        lock = ws.read_lock()
        versions = GaugeMetricFamily("ftctl_versions", "Versions recorded per model", labels=["model"])
        metric = GaugeMetricFamily("ftctl_version_metric", "Train and eval metrics of the latest and stable versions",
                                   labels=["model", "ref", "version", "metric"])
        stable = GaugeMetricFamily("ftctl_deployment_stable", "1 for the version serving as stable",
                                   labels=["model", "version"])
        canary = GaugeMetricFamily("ftctl_canary_percent", "Share of traffic on the canary (0: none)",
                                   labels=["model", "version"])
        rows = GaugeMetricFamily("ftctl_collect_rows", "Rows of the latest collect by outcome",
                                 labels=["model", "outcome"])
        for model in ws.config.model_names():
            state = lock.models.get(model)
            names = list(state.versions) if state else []
            versions.add_metric([model], len(names))
            if not state:
                continue
            refs = {}
            if names:
                from ftctl.registry.versions import sorted_versions

                refs["latest"] = sorted_versions(names)[-1]
            if state.deployment.stable:
                refs["stable"] = state.deployment.stable
                stable.add_metric([model, state.deployment.stable], 1)
            c = state.deployment.canary or {}
            canary.add_metric([model, c.get("version") or ""], float(c.get("percent") or 0))
            for ref, v in refs.items():
                entry = state.versions.get(v)
                for k, x in (entry.metrics if entry else {}).items():
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        metric.add_metric([model, ref, v, k], float(x))
            card = (state.dataset or {}).get("card") or {}
            if card:
                rows.add_metric([model, "read"], card.get("read", 0))
                rows.add_metric([model, "kept"], card.get("kept", 0))
                rows.add_metric([model, "filtered"], sum((card.get("filtered") or {}).values()))
                rows.add_metric([model, "rejected"], sum((card.get("rejected") or {}).values()))
        yield from (versions, metric, stable, canary, rows)
        yield from self._cycle(ws)
        yield from self._jobs()

    def _cycle(self, ws):
        last = _last_event(ws.state_dir / "log.jsonl", "cycle")
        ok = GaugeMetricFamily("ftctl_last_cycle_success",
                               "1 if the last `ftctl cycle` succeeded (nothing to do counts as success)")
        code = GaugeMetricFamily("ftctl_last_cycle_exit_code",
                                 "Exit code of the last `ftctl cycle` (0 ok, 3 nothing to do, 5 gate failed, ...)")
        at = GaugeMetricFamily("ftctl_last_cycle_timestamp_seconds", "When the last `ftctl cycle` ended")
        if last:
            from datetime import datetime

            ok.add_metric([], 1.0 if last.get("ok") else 0.0)
            if last.get("exit_code") is not None:
                code.add_metric([], float(last["exit_code"]))
            at.add_metric([], datetime.fromisoformat(last["time"]).timestamp())
        yield ok
        yield code
        yield at
        from datetime import datetime

        from ftctl.cycle import last_outcomes

        m_ok = GaugeMetricFamily("ftctl_model_last_cycle_success",
                                 "1 if the model's last cycle succeeded (nothing to do counts as success)",
                                 labels=["model"])
        m_code = GaugeMetricFamily("ftctl_model_last_cycle_exit_code", "Exit code of the model's last cycle",
                                   labels=["model"])
        m_at = GaugeMetricFamily("ftctl_model_last_cycle_timestamp_seconds", "When the model's last cycle ended",
                                 labels=["model"])
        for model, o in sorted(last_outcomes(ws).items()):
            m_ok.add_metric([model], 1.0 if o.get("ok") else 0.0)
            m_code.add_metric([model], float(o.get("exit_code", 1)))
            m_at.add_metric([model], datetime.fromisoformat(o["time"]).timestamp())
        yield from (m_ok, m_code, m_at)

    def _jobs(self):
        counts = self.store.counts()
        queue = GaugeMetricFamily("ftctl_jobs_queued", "Jobs waiting for the worker")
        queue.add_metric([], counts.get("queued", 0))
        states = GaugeMetricFamily("ftctl_jobs", "Jobs by state", labels=["state"])
        for s, n in sorted(counts.items()):
            states.add_metric([s], n)
        yield queue
        yield states
        by_kind: dict[str, list[float]] = {}
        for kind, seconds in self.store.durations():
            by_kind.setdefault(kind, []).append(max(0.0, seconds))
        hist = HistogramMetricFamily("ftctl_job_duration_seconds", "Run time of finished jobs", labels=["kind"])
        for kind, xs in sorted(by_kind.items()):
            buckets = [(str(float(b)) if b != float("inf") else "+Inf", sum(1 for x in xs if x <= b)) for b in BUCKETS]
            hist.add_metric([kind], buckets, sum(xs))
        yield hist


def _last_event(path: Path, command: str) -> dict | None:
    """The newest log line of ``command``, reading the file backwards in blocks (it only grows)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - 262144))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("command") == command:
            return e
    return None
