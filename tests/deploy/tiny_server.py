"""A tiny OpenAI-shaped upstream for fast pm2/nginx tests (the real llama.cpp server is in
test_llamacpp.py). Like llama.cpp it refuses to start unless --model is a GGUF file, and it
answers with its --model_alias, so a test can count which version served each request.
"""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--model_alias", default=None)
p.add_argument("--startup-delay", type=float, default=0.0)
a = p.parse_args()

try:
    with open(a.model, "rb") as f:
        if f.read(4) != b"GGUF":
            sys.exit(f"{a.model}: not a GGUF file")
except OSError as e:
    sys.exit(str(e))
time.sleep(a.startup_delay)
ID = a.model_alias or a.model


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid 40 ms delayed-ACK stalls

    def _send(self, data):
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": ID, "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send({"model": ID, "choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    def log_message(self, *args):
        pass


ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()
