"""`ftctl serve` under load: p50/p99 latency of GET /status and GET /metrics with 50 concurrent
clients, while a training job runs, against the same service idle (the baseline, same run).

Loopback only, bounded loops. The training job (a tiny random Llama with SmolLM2's tokenizer,
many steps) is started once through the API; then --rounds rounds alternate idle and training
(idle, training, idle, ...): an idle round pauses the job's process group (SIGSTOP), a training
round lets it run (SIGCONT). Each round sends --requests requests per route through 50 clients.
The figure per phase is the median of its rounds' p99s: one round's p99 rests on its ~10 worst
samples, which a neighbour on a shared machine moves by several times, and interleaving puts
both phases under the same drift of load. The job is cancelled at the end.

The client is aiohttp, not httpx: with 50 requests in flight httpx's connection pool spent
3-5 ms of client CPU per request (aiohttp 0.2-0.4 ms), so on 2 cores the client, not the
service, set the pace (~100 req/s against ~400) and its own scheduling made the tail (idle p99
2.1-2.9 s against 0.2 s, measured side by side, 2026-12-06).

    .venv/bin/python benchmarks/serve.py [--clients 50] [--requests 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _goals import verdict

TOKEN = "bench-token"
# issue 13 asked for the figures, not a bound: this one says the API stays usable while a job
# trains on the same cores (the 2026-12-03 run measured x1.25-1.39)
GOAL_P99 = 2.0
ECOSYSTEM = """module.exports = {apps: [{name: "assistant", script: "python3", interpreter: "none",
  args: "server.py --model models/none.gguf --port 18765"}]};
"""


def tiny_base(out: Path) -> Path:
    """A random 2-layer Llama with the real SmolLM2 tokenizer: trains fast, loads the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftctl.lib.basemodel import DEFAULT_BASE, resolve_base

    real = resolve_base(DEFAULT_BASE).path
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (real / name).is_file():
            shutil.copy(real / name, out / name)
    cfg = LlamaConfig.from_pretrained(real)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, bos_token_id=cfg.bos_token_id,
                                 eos_token_id=cfg.eos_token_id, tie_word_embeddings=True)).save_pretrained(out)
    return out


def workspace(tmp: Path) -> Path:
    from ruamel.yaml import YAML

    from ftctl.registry.init import init

    root = tmp / "ws"
    init(root, model="assistant")
    base = tiny_base((tmp / "base").resolve() if (tmp / "base").mkdir() is None else tmp / "base")
    y = YAML(typ="safe", pure=True)
    cfg = y.load((root / "ftctl.yaml").read_text())
    cfg["base"] = str(base)
    cfg["train"] = {"trainer": "lora", "lora": {"r": 4, "alpha": 8, "batch_size": 2, "max_length": 256,
                                                "checkpoint_every": 1000, "precision": "fp32", "warmup": 0}}
    cfg["deploy"] = {"deployer": "pm2", "pm2": {"ecosystem": "ecosystem.config.js", "app": "assistant"}}
    with open(root / "ftctl.yaml", "w") as f:
        y.dump(cfg, f)
    (root / "ecosystem.config.js").write_text(ECOSYSTEM)
    data = root / "data" / "assistant"
    data.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(200)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "bench"], cwd=root, check=True)
    return root


async def hammer(url: str, route: str, clients: int, total: int) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    per = total // clients

    async def one(session):
        for _ in range(per):
            t = time.perf_counter()
            async with session.get(route) as r:
                body = await r.read()
            latencies.append(time.perf_counter() - t)
            if r.status != 200:
                raise SystemExit(f"{route}: {r.status} {body[:500]!r}")

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return latencies


def pause(pid: int, paused: bool) -> None:
    """Stop or continue the job's process group (the job runs in its own session)."""
    os.killpg(pid, signal.SIGSTOP if paused else signal.SIGCONT)


def cpu_seconds(pid: int) -> float:
    """The service process's CPU so far (user + system): work per request, apart from scheduling."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000 if q < 100 else max(xs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=1000, help="per route and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each phase, interleaved")
    args = ap.parse_args()
    env = {**os.environ, "FTCTL_SERVE_TOKEN": TOKEN, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@x.invalid"}
    os.environ.update({k: v for k, v in env.items() if k.startswith("GIT_")})
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        root = workspace(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "ftctl", "-C", str(root), "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=log)
        api = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            for _ in range(300):
                try:
                    if api.get("/health").status_code in (200, 503):
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            for route in ("/status", "/metrics"):  # warm-up: imports, the first parse of each file
                asyncio.run(hammer(url, route, 5, 20))
            from ftctl.serve.jobs import JobStore

            job = api.post("/finetune/start", json={"max_steps": 100000}).json()
            while api.get(f"/jobs/{job['id']}").json()["progress"]["step"] is None:
                time.sleep(0.5)
            pid = JobStore(root / ".ftctl" / "serve" / "jobs.sqlite").get(job["id"])["pid"]
            p99s: dict[tuple[str, str], list[float]] = {}
            p50s: dict[tuple[str, str], list[float]] = {}
            cpus: dict[tuple[str, str], list[float]] = {}
            try:
                for rnd in range(1, args.rounds + 1):
                    for phase in ("idle", "training"):
                        pause(pid, phase == "idle")
                        for route in ("/status", "/metrics"):
                            cpu = cpu_seconds(proc.pid)
                            xs = asyncio.run(hammer(url, route, args.clients, args.requests))
                            cpus.setdefault((phase, route), []).append((cpu_seconds(proc.pid) - cpu) / len(xs) * 1000)
                            p50s.setdefault((phase, route), []).append(pct(xs, 50))
                            p99s.setdefault((phase, route), []).append(pct(xs, 99))
                            print(f"round {rnd} {phase:9s} {route:9s} n={len(xs):5d}  p50 {pct(xs, 50):8.1f} ms  "
                                  f"p99 {pct(xs, 99):8.1f} ms  service CPU {cpus[phase, route][-1]:.2f} ms/request  "
                                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
            finally:
                pause(pid, False)
            step = api.get(f"/jobs/{job['id']}").json()["progress"]
            api.post(f"/jobs/{job['id']}/cancel")
            print(f"(the training job reached step {step['step']} meanwhile; cancelled)")
            med = statistics.median
            for route in ("/status", "/metrics"):
                idle, busy = ("idle", route), ("training", route)
                print(f"{route}: medians of {args.rounds} rounds: idle p50 {med(p50s[idle]):.1f} p99 {med(p99s[idle]):.1f} ms, "
                      f"training p50 {med(p50s[busy]):.1f} p99 {med(p99s[busy]):.1f} ms; training/idle "
                      f"p50 x{med(p50s[busy]) / med(p50s[idle]):.2f}, p99 x{med(p99s[busy]) / med(p99s[idle]):.2f}; "
                      f"service CPU idle {med(cpus[idle]):.2f}, training {med(cpus[busy]):.2f} ms/request")
                # every request was answered 200 (hammer stops the run otherwise)
                verdict(f"{route} p99 training / idle", med(p99s[busy]) / med(p99s[idle]), GOAL_P99,
                        higher_is_better=False)
        finally:
            api.close()
            proc.terminate()
            proc.wait(60)
            log.close()


if __name__ == "__main__":
    main()
