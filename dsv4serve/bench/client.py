"""Our own load client: streamed completions over plain HTTP (no engine's code), the same figures as
`vllm bench serve` (vLLM 0.32, `vllm/benchmarks/serve.py` and `lib/endpoint_request_func.py`) for any
OpenAI-compatible server (llama.cpp, Transformers, vLLM).

Each figure is defined as vLLM defines it:
- a request's first token is the first chunk whose `choices` is not empty, its text empty or not (a
  special token, a partial UTF-8 byte); a usage-only chunk is no token. TTFT: sending to that chunk;
- its latency: sending to its last chunk with `choices` (not the usage chunk, not `[DONE]`);
- its output tokens: the stream's usage `completion_tokens` (`stream_options.include_usage`); where a
  server sends no usage, the chunks with `choices` (vLLM re-tokenizes the text: we carry no tokenizer);
- TPOT: (latency - TTFT) / (output tokens - 1), only for requests of more than one token; the mean;
- tokens/s and requests/s: output tokens and completed requests over the level's wall time; p99: numpy's
  linear interpolation. Every request at once, at most `concurrency` in flight; each worker keeps its
  connection (keep-alive, as vLLM's aiohttp pool); no warm-up (vLLM's default `--num-warmups 0`).
A request counts as an error when its status is not 200, the connection fails, or no chunk has
`choices` (as vLLM), and also (stricter than vLLM, which counts these as short successes) when an
error object comes in the stream or the stream ends without its `data: [DONE]`.
Prompts of --input-len: their length is fitted to the server's own count (usage `prompt_tokens` of up
to four one-token requests), as vLLM's random dataset has that many tokens of the model's tokenizer.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from dsv4serve.bench.figures import Level, mean, percentile
from dsv4serve.serving import health as h

FIT_INDEX = 99999  # the fitting requests' prompt number: no measured prompt shares their prefix
_clock = time.perf_counter  # vLLM's clock; every time here is read through it (tests count reads)


@dataclass(frozen=True)
class Request:
    """One request as measured (vLLM's RequestFuncOutput): seconds from sending."""

    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0


def prompt_text(index: int, words: int) -> str:
    """Prompt `index` of `words` words of one width, distinct from its first characters (no prefix
    cache serves it) and as long as every other prompt of as many words."""
    return f"request {index:05d}: " + " ".join(f"w{10 + (index * 7 + j) % 90}" for j in range(words))


def make_prompts(
    input_len: int, count: int, dataset: list[str] | None = None, words: int | None = None
) -> list[str]:
    """The dataset's prompts in turn, or `count` prompts of `words` words (fit_words), else of about
    input_len tokens at one token a word."""
    if dataset:
        return [dataset[i % len(dataset)] for i in range(count)]
    n = words if words is not None else max(1, input_len - 8)
    return [prompt_text(i, n) for i in range(count)]


def fit_words(
    base_url: str, model: str, input_len: int, api_key: str | None = None, timeout: float = 120.0
) -> int | None:
    """Words a prompt needs for input_len tokens as this server counts them: usage `prompt_tokens` of
    one-token requests, a secant through the last two (at most 4 requests); None without usage."""

    def count(words: int) -> int | None:
        return prompt_tokens(base_url, model, prompt_text(FIT_INDEX, words), api_key, timeout)

    points = []
    for words in (max(1, input_len // 4), max(2, input_len // 2)):
        tokens = count(words)
        if tokens is None:
            return None
        points.append((words, tokens))
    best = min(points, key=lambda p: abs(p[1] - input_len))
    for _ in range(2):
        (w1, t1), (w2, t2) = points[-2:]
        if t2 == t1:
            break
        words = max(1, round(w2 + (input_len - t2) * (w2 - w1) / (t2 - t1)))
        if words in (w for w, _ in points):
            break
        tokens = count(words)
        if tokens is None:
            break
        points.append((words, tokens))
        best = min(best, (words, tokens), key=lambda p: abs(p[1] - input_len))
        if tokens == input_len:
            break
    return best[0]


def prompt_tokens(
    base_url: str, model: str, prompt: str, api_key: str | None = None, timeout: float = 120.0
) -> int | None:
    """The server's count of the prompt's tokens (usage of a one-token completion), None without usage."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1}
    conn = _connect(base_url, timeout)
    try:
        conn.request("POST", _path(base_url), json.dumps(body), _headers(api_key))
        resp = conn.getresponse()
        data = json.loads(resp.read()) if resp.status == 200 else {}
        value = (data.get("usage") or {}).get("prompt_tokens")
        return int(value) if isinstance(value, int) and value > 0 else None
    except (OSError, ValueError, AttributeError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def read_stream(lines: Iterable[bytes], t0: float, clock: Callable[[], float]) -> Request:
    """A request's figures from its SSE lines, each timed by `clock` as it is read; t0: when it was sent."""
    first = last = None
    chunks = tokens = 0
    done = False
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, `:` comments (pings), `event:` lines
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        now = clock()
        data = json.loads(payload)
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("error"), dict):  # an error mid-stream (vLLM's and llama.cpp's shape)
            return Request(error=str(data["error"].get("message") or "error in the stream")[:200])
        if data.get("choices"):
            first = now if first is None else first
            last = now
            chunks += 1
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            tokens = usage["completion_tokens"]
    if first is None or last is None:
        return Request(error="no chunk with choices")
    if not done:
        return Request(error="the stream ended without [DONE]")
    return Request(ttft=first - t0, latency=last - t0, output_tokens=tokens or chunks)


def _path(base_url: str) -> str:
    return urllib.parse.urlsplit(base_url).path.rstrip("/") + "/v1/completions"


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _connect(base_url: str, timeout: float) -> http.client.HTTPConnection:
    url = urllib.parse.urlsplit(base_url)
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return conn_cls(url.hostname, url.port, timeout=timeout)


class _Connections:
    """One keep-alive connection per worker thread, as vLLM's aiohttp connector keeps one per request
    in flight; all closed at the end of the level."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[http.client.HTTPConnection] = []

    def get(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it is new."""
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            return conn, False
        conn = self.local.conn = _connect(self.base_url, 600)
        with self.lock:
            self.opened.append(conn)
        return conn, True

    def drop(self) -> None:
        conn, self.local.conn = getattr(self.local, "conn", None), None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self.lock:
            for conn in self.opened:
                conn.close()


def _one(conns: _Connections, model: str, prompt: str, output_len: int, api_key: str | None) -> Request:
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": output_len,
            "ignore_eos": True,  # the asked length, as `vllm bench serve --ignore-eos`
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    for _attempt in range(2):
        conn, new = conns.get()
        t0 = _clock()
        try:
            conn.request("POST", _path(conns.base_url), body, _headers(api_key))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conns.drop()
            if new:  # a kept connection the server has closed meanwhile is opened again, once
                return Request(error=type(err).__name__)
            continue
        try:
            if resp.status != 200:
                resp.read()
                result = Request(error=f"HTTP {resp.status}")
            else:
                result = read_stream(iter(resp.readline, b""), t0, _clock)
                resp.read()  # the chunked end, so that the connection serves the next request
        except (OSError, ValueError, http.client.HTTPException) as err:
            conns.drop()
            return Request(error=type(err).__name__)
        if resp.will_close or result.error:
            conns.drop()
        return result
    return Request(error="no connection")


def run_level(
    base_url: str,
    model: str,
    concurrency: int,
    prompts: list[str],
    output_len: int,
    api_key: str | None = None,
) -> Level:
    """Send every prompt, at most `concurrency` at once; the level's figures."""
    before = _spec_counters(base_url, api_key)
    conns = _Connections(base_url)
    t0 = _clock()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(lambda p: _one(conns, model, p, output_len, api_key), prompts))
    finally:
        conns.close()
    duration = _clock() - t0
    after = _spec_counters(base_url, api_key)
    level = figures(results, concurrency, duration)
    if before and after and after[1] > before[1]:
        level = replace(level, acceptance_rate=_round((after[0] - before[0]) / (after[1] - before[1]), 4))
    return level


def figures(results: list[Request], concurrency: int, duration: float) -> Level:
    """The level's figures from its requests, as vLLM's calculate_metrics makes them."""
    good = [r for r in results if not r.error]
    tokens = sum(r.output_tokens for r in good)
    ttfts = [r.ttft * 1000 for r in good]
    tpots = [(r.latency - r.ttft) * 1000 / (r.output_tokens - 1) for r in good if r.output_tokens > 1]
    return Level(
        concurrency=concurrency,
        requests=len(results),
        errors=len(results) - len(good),
        duration_s=round(duration, 3),
        output_tokens=tokens,
        tokens_per_s=round(tokens / duration, 2) if duration > 0 else 0.0,
        requests_per_s=round(len(good) / duration, 3) if duration > 0 else 0.0,
        ttft_mean_ms=_round(mean(ttfts)),
        ttft_p99_ms=_round(percentile(ttfts, 99)),
        tpot_mean_ms=_round(mean(tpots)),
        tpot_p99_ms=_round(percentile(tpots, 99)),
    )


def _spec_counters(base_url: str, api_key: str | None) -> tuple[float, float] | None:
    """(accepted, drafted) speculative tokens from /metrics, where the engine reports them."""
    status, text = h.get_text(base_url + "/metrics", 5.0, api_key)
    if status != 200:
        return None
    m = h.parse_metrics(text)
    accepted, drafted = h.pick(m, h.SPEC_ACCEPTED), h.pick(m, h.SPEC_DRAFTED)
    return (accepted, drafted) if accepted is not None and drafted is not None else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
