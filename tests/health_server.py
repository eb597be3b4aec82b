"""A small OpenAI-style server process for the health watch's fast tests (the slow ones use vLLM).

    python tests/health_server.py PORT

It answers /health, /metrics (vLLM's names: requests running, generation tokens) and /v1/completions,
streamed or not, one token per 10 ms. A prompt "hang" freezes the engine: from then on every request
stays running and produces nothing while /health stays 200 (the engine spin seen in vLLM's tracker).
POST /grow?mib=N starts a helper process in the server's group that allocates N MiB, 32 MiB at a time,
and holds it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"running": 0, "tokens": 0}
FROZEN = threading.Event()

GROW = r"""
import sys, time
chunks = []
for _ in range(int(sys.argv[1]) // 32):
    chunks.append(bytearray(32 * 2**20))  # bytearray() writes its pages: resident at once
    time.sleep(0.2)
print("grown", flush=True)
time.sleep(3600)
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny"}]}).encode())
        elif self.path == "/metrics":
            with LOCK:
                text = (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f'vllm:num_requests_running{{engine="0",model_name="tiny"}} {STATE["running"]}.0\n'
                    f'vllm:num_requests_waiting{{engine="0",model_name="tiny"}} 0.0\n'
                    f'vllm:generation_tokens_total{{engine="0",model_name="tiny"}} {STATE["tokens"]}.0\n'
                )
            self._send(200, text.encode(), "text/plain")
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path.startswith("/grow?mib="):
            mib = str(int(self.path.partition("=")[2]))
            subprocess.Popen([sys.executable, "-c", GROW, mib])  # a child: in the server's process group
            self._send(200, b"{}")
            return
        if self.path != "/v1/completions":
            self._send(404, b"{}")
            return
        with LOCK:
            STATE["running"] += 1
        try:
            if body.get("prompt") == "hang":
                FROZEN.set()
            if FROZEN.is_set():
                time.sleep(3600)
            n = int(body.get("max_tokens", 1))
            if body.get("stream"):
                self._stream(n)
                return
            for _ in range(n):
                time.sleep(0.01)
                with LOCK:
                    STATE["tokens"] += 1
            self._send(200, json.dumps({"choices": [{"text": "x" * n, "finish_reason": "length"}]}).encode())
        finally:
            with LOCK:
                STATE["running"] -= 1

    def _stream(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(n):
            time.sleep(0.01)
            with LOCK:
                STATE["tokens"] += 1
            chunk = {"choices": [{"text": "x", "finish_reason": "length" if i == n - 1 else None}]}
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def main() -> None:
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"serving on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
