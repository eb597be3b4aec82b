"""dsv4serve's own bench client defines each figure as `vllm bench serve` does: against a real HTTP
server on 127.0.0.1 streaming scripted SSE chunks, with the client's clock counting its reads (one tick
a read) so the formulas are checked without timing anything; and the level's figures against vLLM's
own calculate_metrics where vLLM is installed."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dsv4serve.bench import client
from dsv4serve.bench.client import Request


def _chunk(text: str | None = None, finish: str | None = None, usage: int | None = None) -> dict:
    if usage is not None:
        return {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": usage}}
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


SCRIPTS = {  # prompt -> the data lines of its stream (None: the stream is cut there)
    # vLLM's completions stream for random weights: a first token that decodes to no text, a last one
    # too, then the usage chunk; 5 tokens in 4 chunks (two came bundled)
    "special-first": [
        _chunk(""),
        _chunk("a"),
        _chunk("bc"),
        _chunk("", "length"),
        _chunk(usage=5),
        "[DONE]",
    ],
    "pings": [": ping", _chunk("a"), "event: message", _chunk("b", "length"), _chunk(usage=2), "[DONE]"],
    "one-token": [_chunk("x", "length"), _chunk(usage=1), "[DONE]"],
    "no-usage": [_chunk("a"), _chunk("b"), _chunk("c", "length"), "[DONE]"],
    "cut": [_chunk("a"), _chunk("b"), None],
    "usage-only": [_chunk(usage=3), "[DONE]"],
    "error-in-stream": [_chunk("a"), {"error": {"message": "engine died"}}, "[DONE]"],
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as uvicorn (asyncio) serves: no chunk waits for a delayed ACK
    connections: set[int] = set()  # client ports of the connections that carried a completion

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        type(self).connections.add(self.client_address[1])  # its port names the connection
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["prompt"]
        if not body.get("stream"):  # fit_words: a byte-level tokenizer, as the tiny model's
            reply = json.dumps({"choices": [{"text": "x"}], "usage": {"prompt_tokens": len(prompt.encode())}})
            self._reply(200, reply.encode())
        elif prompt not in SCRIPTS:
            self._reply(500, b'{"error": {"message": "no such script"}}')
        else:
            self._stream(SCRIPTS[prompt])

    def _reply(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, lines: list) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            if line is None:  # a cut stream: the chunked body ends, no [DONE]
                break
            text = line if isinstance(line, str) and line.startswith((":", "event:")) else None
            text = text or f"data: {line if isinstance(line, str) else json.dumps(line)}"
            data = f"{text}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def sse():
    _Handler.connections = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def ticks(monkeypatch):
    """The client's clock: 0, 1, 2, ... one a read (t0 at sending, then one per data line)."""
    counter = itertools.count()
    lock = threading.Lock()

    def clock() -> float:
        with lock:
            return float(next(counter))

    monkeypatch.setattr(client, "_clock", clock)


def test_the_first_chunk_with_choices_is_the_first_token_and_usage_counts_the_tokens(sse, ticks):
    level = client.run_level(sse, "m", 1, ["special-first"], 16)
    # run_level reads tick 0; the request is sent at 1, its chunks read at 2 (empty text), 3, 4, 5
    # (the last with choices), 6 (usage). TTFT 1 tick, latency 4: TPOT (4 - 1) / (5 usage tokens - 1).
    # Timing from the first chunk with text to the last (ticks 3 and 4) gave TTFT 2000 and TPOT 250.
    assert (level.errors, level.output_tokens) == (0, 5)
    assert level.ttft_mean_ms == 1000.0 and level.ttft_p99_ms == 1000.0
    assert level.tpot_mean_ms == 750.0


def test_pings_and_event_lines_are_no_chunks(sse, ticks):
    level = client.run_level(sse, "m", 1, ["pings"], 16)
    assert (level.errors, level.output_tokens, level.ttft_mean_ms, level.tpot_mean_ms) == (
        0,
        2,
        1000.0,
        1000.0,
    )


def test_a_one_token_request_has_a_ttft_and_no_tpot(sse, ticks):
    level = client.run_level(sse, "m", 1, ["one-token"], 1)
    assert (level.errors, level.output_tokens, level.ttft_mean_ms, level.tpot_mean_ms) == (0, 1, 1000.0, None)


def test_without_usage_the_chunks_with_choices_are_the_tokens(sse, ticks):
    level = client.run_level(sse, "m", 1, ["no-usage"], 3)
    assert (level.errors, level.output_tokens, level.tpot_mean_ms) == (0, 3, 1000.0)


@pytest.mark.parametrize("prompt", ["cut", "usage-only", "error-in-stream", "unknown (HTTP 500)"])
def test_failed_requests_are_errors_and_keep_no_figures(sse, prompt):
    level = client.run_level(sse, "m", 1, [prompt, "one-token"], 4)
    assert (level.requests, level.errors, level.output_tokens, level.requests_per_s > 0) == (2, 1, 1, True)


def test_each_worker_keeps_its_connection(sse):
    level = client.run_level(sse, "m", 2, ["special-first", "cut", "one-token"] * 4, 16)
    assert (level.requests, level.errors) == (12, 4)
    # a cut stream's connection is dropped (its state is unknown), a finished one serves the next request
    assert len(_Handler.connections) <= 2 + 4
    _Handler.connections = set()
    assert client.run_level(sse, "m", 2, ["special-first"] * 8, 16).errors == 0
    assert len(_Handler.connections) <= 2


def test_prompts_are_fitted_to_the_servers_token_count(sse):
    words = client.fit_words(sse, "m", 64)
    assert words is not None
    for i in (0, 7, 123):  # the server counts bytes; words are 4 bytes with their space
        assert abs(len(client.prompt_text(i, words).encode()) - 64) <= 2
    assert len(set(client.make_prompts(64, 5, None, words))) == 5
    assert client.fit_words(f"http://127.0.0.1:{_free_port()}", "m", 64, timeout=2) is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_level_figures_are_vllms_calculate_metrics():
    pytest.importorskip("vllm")
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    requests = [
        Request(ttft=0.010, latency=0.070, output_tokens=16),
        Request(ttft=0.020, latency=0.020, output_tokens=16),  # one burst: TPOT 0
        Request(ttft=0.030, latency=0.030, output_tokens=1),  # no TPOT, a TTFT
        Request(ttft=0.015, latency=0.115, output_tokens=11),
        Request(error="HTTP 500"),
    ]
    outputs = [
        RequestFuncOutput(
            success=not r.error, ttft=r.ttft, latency=r.latency, output_tokens=r.output_tokens, error=r.error
        )
        for r in requests
    ]
    metrics, _ = calculate_metrics([], outputs, 2.0, None, [99.0], {})
    level = client.figures(requests, 4, 2.0)
    assert (level.requests - level.errors, level.errors) == (metrics.completed, metrics.failed)
    assert level.output_tokens == metrics.total_output
    assert level.tokens_per_s == pytest.approx(metrics.output_throughput, abs=0.01)
    assert level.requests_per_s == pytest.approx(metrics.request_throughput, abs=0.001)
    assert level.ttft_mean_ms == pytest.approx(metrics.mean_ttft_ms, abs=0.01)
    assert level.ttft_p99_ms == pytest.approx(dict(metrics.percentiles_ttft_ms)[99.0], abs=0.01)
    assert level.tpot_mean_ms == pytest.approx(metrics.mean_tpot_ms, abs=0.01)
