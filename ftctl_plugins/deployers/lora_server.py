"""``python -m ftctl_plugins.deployers.lora_server``: one llama-server with LoRA adapters, off.

The lora_swap deployer starts this in its own session so the server outlives the ftctl command.
The server is llama.cpp's own llama-server, embedded in the ``xllamacpp`` wheel (no build, no
binary to find): it loads the base GGUF once and every ``--lora`` file with scale 0
(``lora_init_without_apply``) and listens on an internal loopback port. ``--port`` is the
router's (lora_router): it picks each completion's adapter (stable or canary) from ``--state``
and passes on only what clients need; the deployer sets the global scales with POST /lora-adapters
on ``--upstream-port``, the internal one.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path


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
    ap.add_argument("--state", required=True, help="the deployer's state file: the router's routing")
    ap.add_argument("--access-log", help="where the router records each routed request (access_log.line)")
    ap.add_argument("--upstream-port", type=int, default=0,
                    help="llama-server's internal loopback port (its control API is reachable there only)")
    ap.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="largest request body the router takes")
    a = ap.parse_args(argv)

    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.hostnames = ["127.0.0.1"]
    p.port = internal = a.upstream_port or free_port()
    p.n_ctx = a.ctx_size
    p.n_parallel = a.parallel
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.endpoint_metrics = True
    if a.alias:
        p.model_alias = a.alias
    p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(f, 0.0) for f in a.lora]
    p.lora_init_without_apply = True  # loaded, scale 0: the deployer turns one on
    # no host-RAM prompt cache: it matches saved prompts by tokens alone, so a canary request
    # got KV computed with the stable adapter (seen in tests/deploy/test_lora_swap.py); a slot's
    # own cache stays, and llama-server clears it when the request's adapters differ
    p.cache_ram_mib = 0
    server = xllamacpp.Server(p)  # listens from here on, in its own threads
    print(f"llama-server on {server.listening_address}; the router on {a.host}:{a.port}", flush=True)

    import uvicorn

    from ftctl_plugins.deployers import lora_router

    # uvicorn ends on SIGTERM/SIGINT (the deployer stops the process group); the llama-server
    # threads end with the process
    router = lora_router.app(f"http://127.0.0.1:{internal}", Path(a.state),
                             Path(a.access_log) if a.access_log else None, max_body=a.max_body)
    # keep-alive as long as nginx's default (75 s), not uvicorn's 5 s: clients of a model server
    # pause between requests longer than that
    uvicorn.run(router, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=5,
                timeout_keep_alive=75)


def free_port() -> int:
    """A loopback port for the internal llama-server (the router alone needs a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
