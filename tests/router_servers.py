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
    ("simple", "complex", or any other text, sent as the content as is; or a function of the judged text
    giving one) after `classify_delay` s, with logprobs giving `p_complex` (a number or a function of the
    text) when set; other calls get an answer naming `model`, streamed as `chunks` SSE events
    `chunk_gap` s apart. /v1/models reports `max_model_len` when set; /tokenize counts a quarter token a
    byte of the messages' JSON, as vLLM's answers it."""

    def __init__(self, model: str, **settings: Any):
        self.model = model
        self.level = settings.get("level", "simple")
        self.classify_delay = settings.get("classify_delay", 0.0)
        self.status = settings.get("status", 200)
        self.key = settings.get("key")
        self.chunks = settings.get("chunks", 3)
        self.chunk_gap = settings.get("chunk_gap", 0.0)
        self.drop = settings.get("drop", 0)  # this many POSTs get the connection closed, no answer
        self.max_model_len = settings.get("max_model_len")
        self.p_complex = settings.get("p_complex")
        self.cut = 0  # streams the client closed before their end
        # {"method", "path", "headers", "body"} of every request, in order; POSTs add "t_in" (arrived,
        # monotonic) and classifier calls "t_out" (answered)
        self.calls: list[dict] = []
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
        """The requests the router forwarded (POSTs that are not classifier calls or token counts)."""
        asked = self.classifier_calls()
        return [
            c for c in self.calls if c["method"] == "POST" and c not in asked and c["path"] != "/tokenize"
        ]

    def tokenize_calls(self) -> list[dict]:
        return [c for c in self.calls if c["path"] == "/tokenize"]

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
                    card = {"id": fake.model, "object": "model"}
                    if fake.max_model_len:
                        card["max_model_len"] = fake.max_model_len
                    self._json(200, {"object": "list", "data": [card]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                call = {"method": "POST", "path": self.path, "headers": self._headers(), "body": body}
                call["t_in"] = time.monotonic()
                fake.calls.append(call)
                if not self._authorized():
                    return
                if fake.drop > 0:  # as a server closing an idle kept-alive connection the client reused
                    fake.drop -= 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fake.status != 200:
                    self._json(fake.status, {"error": {"message": "unavailable", "code": fake.status}})
                elif self.path == "/tokenize":
                    count = len(json.dumps(body.get("messages") or body.get("prompt"))) // 4
                    self._json(200, {"count": count, "max_model_len": fake.max_model_len, "tokens": []})
                elif call in fake.classifier_calls():
                    time.sleep(fake.classify_delay)
                    text = body["messages"][-1]["content"]
                    level = fake.level(text) if callable(fake.level) else fake.level
                    content = (
                        json.dumps({"level": level}, separators=(",", ":")) if level in LEVELS else level
                    )
                    choice = {"message": {"role": "assistant", "content": content}}
                    p = fake.p_complex(text) if callable(fake.p_complex) else fake.p_complex
                    if p is not None and level in LEVELS:
                        choice["logprobs"] = {"content": _logprobs(level, p)}
                    usage = {"prompt_tokens": 100, "completion_tokens": 7}
                    self._json(200, {"model": fake.model, "choices": [choice], "usage": usage})
                    call["t_out"] = time.monotonic()
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
                try:
                    for i, event in enumerate(events):
                        if i:
                            time.sleep(fake.chunk_gap)
                        data = f"data: {event}\n\n".encode()
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client went away: as vLLM, stop generating
                    fake.cut += 1
                    self.close_connection = True

        return Handler


LEVELS = ("simple", "complex")


def fake_pair():
    """A fake Flash and a fake Pro, closed after the test (a fixture's body: `yield from fake_pair()`)."""
    flash, pro = FakeUpstream("flash-model"), FakeUpstream("pro-model")
    yield flash, pro
    flash.close()
    pro.close()


def read_ready(proc) -> dict:
    """`route --json`'s ready event from a running route process's stdout."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("}"):
            return json.loads("".join(lines))
    raise AssertionError(f"no ready event; stderr: {proc.stderr.read()}")


def _logprobs(level: str, p: float) -> list[dict]:
    """vLLM's logprobs of a compact JSON answer: the token that begins the level has both alternatives."""
    import math

    alts = [{"token": "complex", "logprob": math.log(max(p, 1e-12))}]
    alts.append({"token": "simple", "logprob": math.log(max(1 - p, 1e-12))})
    alts.sort(key=lambda a: a["token"] != level)
    chosen = next(a for a in alts if a["token"] == level)
    tokens = [
        {"token": '{"level":"', "logprob": 0.0, "top_logprobs": [{"token": '{"level":"', "logprob": 0.0}]}
    ]
    tokens.append({**chosen, "top_logprobs": alts})
    tokens.append({"token": '"}', "logprob": 0.0, "top_logprobs": [{"token": '"}', "logprob": 0.0}]})
    return tokens


class RouterThread:
    """The router's real app (dsv4serve.router) served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, profile, flash, pro, api_key: str | None = None):
        import uvicorn

        from dsv4serve.router.app import create_app
        from dsv4serve.router.dispatch import Router
        from dsv4serve.router.server import bind

        self.router = Router(profile, flash, pro)
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(self.router, api_key)
        config = uvicorn.Config(app, log_level="warning", access_log=False)
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
