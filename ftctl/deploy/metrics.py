"""llama-server's Prometheus ``/metrics``: each slot's generation counters (tokens, seconds).

`ftctl deploy --canary` records where both servers' counters stand when a stage begins
(ftctl.deploy.rollout); `canary check` reads them again and judges the latency over the stage
(ftctl.deploy.canary). An endpoint that does not answer is reported, never raised.
"""

from __future__ import annotations

from typing import Any

SIDES = ("stable", "canary")


def scrape(url: str, timeout: float) -> dict[str, Any]:
    """llama-server's /metrics -> its generation counters; an unreachable endpoint is reported, not raised."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read(1 << 20).decode("utf-8", "replace")
        values = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    except (OSError, ValueError) as e:
        return {"url": url, "ok": False, "error": str(getattr(e, "reason", e)) or type(e).__name__}
    tokens = values.get("llamacpp:tokens_predicted_total")
    seconds = values.get("llamacpp:tokens_predicted_seconds_total")
    if tokens is None or seconds is None:
        return {"url": url, "ok": False, "error": "no llamacpp:tokens_predicted_* counters (is it llama-server?)"}
    return {"url": url, "ok": True, "tokens": tokens, "seconds": seconds}


def scrape_sides(apps: list[dict], cfg) -> dict[str, dict[str, Any]]:
    """Each side's /metrics (the sides with a port); one request per URL, so one server answering
    for both sides (lora_swap) is read once and both get the same counters."""
    urls = {app["role"]: cfg.metrics_url.format(port=app["port"])
            for app in apps if app.get("role") in SIDES and app.get("port")}
    seen = {url: scrape(url, cfg.metrics_timeout) for url in set(urls.values())}
    return {role: seen[url] for role, url in urls.items()}


def counters(slots: list[dict], cfg) -> dict[str, dict[str, float]]:
    """Each side's generation counters now (the sides whose /metrics answer): a stage's start."""
    return {role: {"tokens": m["tokens"], "seconds": m["seconds"]}
            for role, m in scrape_sides(slots, cfg).items() if m["ok"]}
