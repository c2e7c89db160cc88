"""A tiny OpenAI-shaped upstream for fast pm2/nginx tests (the real llama.cpp server is in
test_llamacpp.py). Like llama.cpp it refuses to start unless --model is a GGUF file (one holding
"unloadable" fails to load), names the file in /props, and it answers with its --model_alias, so a test can count which version served each request.
It also serves llama-server's Prometheus /metrics counters that `ftctl canary check` reads:
every answer "predicts" one token in --ms-per-token milliseconds. A file ``<model>.fail`` holding
a rate (0.25) makes it fail that share of answers with a 500: a broken build, for error-rate tests.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--model_alias", default=None)
p.add_argument("--startup-delay", type=float, default=0.0)
p.add_argument("--ms-per-token", type=float, default=20.0)
a = p.parse_args()

try:
    with open(a.model, "rb") as f:
        head = f.read(4096)
        if head[:4] != b"GGUF":
            sys.exit(f"{a.model}: not a GGUF file")
        if b"unloadable" in head:  # a GGUF llama.cpp would refuse (a broken conversion)
            sys.exit(f"{a.model}: failed to load model")
except OSError as e:
    sys.exit(str(e))
time.sleep(a.startup_delay)
ID = a.model_alias or a.model
COUNT = {"tokens": 1, "seconds": a.ms_per_token / 1000, "posts": 0}  # as if one request had been served
try:
    with open(a.model + ".fail") as f:
        FAIL = float(f.read())
except OSError:
    FAIL = 0.0
LOCK = threading.Lock()
METRICS = """# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total {tokens}
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total {seconds:.6f}
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid 40 ms delayed-ACK stalls

    def _send(self, body: bytes, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/props"):  # as llama-server: the file it loaded
            self._send(json.dumps({"model_path": a.model, "total_slots": 1}).encode())
            return
        if self.path.startswith("/metrics"):
            with LOCK:
                text = METRICS.format(**COUNT)
            self._send(text.encode(), "text/plain; version=0.0.4")
            return
        self._send(json.dumps({"object": "list", "data": [{"id": ID, "object": "model"}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with LOCK:
            COUNT["posts"] += 1
            n = COUNT["posts"]
            fail = int(n * FAIL) > int((n - 1) * FAIL)  # exactly FAIL of the answers, spread evenly
            if not fail:
                COUNT["tokens"] += 1
                COUNT["seconds"] += a.ms_per_token / 1000
        if fail:
            self.send_error(500, "injected failure")
            return
        self._send(json.dumps({"model": ID, "choices": [{"message": {"role": "assistant", "content": "ok"}}]}).encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()
