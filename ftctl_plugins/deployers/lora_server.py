"""``python -m ftctl_plugins.deployers.lora_server``: one llama-server with LoRA adapters, off.

The lora_swap deployer starts this in its own session so the server outlives the ftctl command.
The server is llama.cpp's own llama-server, embedded in the ``xllamacpp`` wheel (no build, no
binary to find): it loads the base GGUF once and every ``--lora`` file with scale 0
(``lora_init_without_apply``); the deployer switches adapters with POST /lora-adapters.
"""

from __future__ import annotations

import argparse
import signal
import threading


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lora_server")
    ap.add_argument("--model", required=True, help="the base GGUF")
    ap.add_argument("--lora", action="append", default=[], help="a LoRA GGUF (repeat; ids follow the order)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx-size", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--alias", default="")
    a = ap.parse_args(argv)

    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.hostnames = [a.host]
    p.port = a.port
    p.n_ctx = a.ctx_size
    p.n_parallel = a.parallel
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.endpoint_metrics = True
    if a.alias:
        p.model_alias = a.alias
    p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(f, 0.0) for f in a.lora]
    p.lora_init_without_apply = True  # loaded, scale 0: the deployer turns one on
    server = xllamacpp.Server(p)  # listens from here on, in its own threads
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"listening on {server.listening_address}", flush=True)
    done.wait()


if __name__ == "__main__":
    main()
