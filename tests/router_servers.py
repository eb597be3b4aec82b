"""Real local HTTP servers for the router's tests: a small OpenAI-compatible upstream (stdlib) that gives
the answers vLLM will not give on demand (junk, a slow classifier, 503, chunks at set times), and the
router's own app served by uvicorn in a thread."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url() -> str:
    """An address where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1. Classifier calls (with structured output) get `level`
    ("simple", "complex", or any other text, sent as the content as is) after `classify_delay` s; other
    calls get an answer naming `model`, streamed as `chunks` SSE events `chunk_gap` s apart."""

    def __init__(self, model: str, **settings: Any):
        self.model = model
        self.level = settings.get("level", "simple")
        self.classify_delay = settings.get("classify_delay", 0.0)
        self.status = settings.get("status", 200)
        self.key = settings.get("key")
        self.chunks = settings.get("chunks", 3)
        self.chunk_gap = settings.get("chunk_gap", 0.0)
        self.drop = settings.get("drop", 0)  # this many POSTs get the connection closed, no answer
        self.calls: list[dict] = []  # {"method", "path", "headers", "body"} of every request, in order
        self.connections: list[socket.socket] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop open keep-alive connections: from now on, nothing answers."""
        self.server.shutdown()
        self.server.server_close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def classifier_calls(self) -> list[dict]:
        return [c for c in self.calls if "structured_outputs" in c["body"] or "response_format" in c["body"]]

    def served_calls(self) -> list[dict]:
        """The requests the router forwarded (POSTs that are not classifier calls)."""
        asked = self.classifier_calls()
        return [c for c in self.calls if c["method"] == "POST" and c not in asked]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Small writes go out at once, as vLLM's (uvicorn's) do; Nagle would hold them for an ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                fake.connections.append(self.connection)

            def log_message(self, *args):  # quiet: pytest shows failures, not access logs
                pass

            def _json(self, status: int, data: dict) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _headers(self) -> dict[str, str]:
                return {k.lower(): v for k, v in self.headers.items()}

            def _authorized(self) -> bool:
                if fake.key and self.headers.get("authorization") != f"Bearer {fake.key}":
                    self._json(401, {"error": {"message": "bad key", "code": 401}})
                    return False
                return True

            def do_GET(self):
                fake.calls.append(
                    {"method": "GET", "path": self.path, "headers": self._headers(), "body": {}}
                )
                if self.path == "/health":
                    self._json(200, {})
                elif self.path == "/v1/models" and self._authorized():
                    self._json(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                call = {"method": "POST", "path": self.path, "headers": self._headers(), "body": body}
                fake.calls.append(call)
                if not self._authorized():
                    return
                if fake.drop > 0:  # as a server closing an idle kept-alive connection the client reused
                    fake.drop -= 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fake.status != 200:
                    self._json(fake.status, {"error": {"message": "unavailable", "code": fake.status}})
                elif call in fake.classifier_calls():
                    time.sleep(fake.classify_delay)
                    content = json.dumps({"level": fake.level}) if fake.level in LEVELS else fake.level
                    message = {"role": "assistant", "content": content}
                    usage = {"prompt_tokens": 100, "completion_tokens": 7}
                    self._json(200, {"model": fake.model, "choices": [{"message": message}], "usage": usage})
                elif body.get("stream"):
                    self._stream()
                else:
                    message = {"role": "assistant", "content": f"hello from {fake.model}"}
                    self._json(200, {"model": fake.model, "choices": [{"message": message}]})

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                events = [
                    json.dumps({"model": fake.model, "choices": [{"delta": {"content": f"part{i} "}}]})
                    for i in range(fake.chunks)
                ] + ["[DONE]"]
                for i, event in enumerate(events):
                    if i:
                        time.sleep(fake.chunk_gap)
                    data = f"data: {event}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        return Handler


LEVELS = ("simple", "complex")


class RouterThread:
    """The router's real app (dsv4serve.router) served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, profile, flash, pro):
        import uvicorn

        from dsv4serve.router.app import create_app
        from dsv4serve.router.dispatch import Router
        from dsv4serve.router.server import bind

        self.router = Router(profile, flash, pro)
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.router), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < end, "the router did not start within 10 s"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from the router's registry (0 when it was never set)."""
        return self.router.metrics.registry.get_sample_value(name, labels or None) or 0.0
