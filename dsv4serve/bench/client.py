"""Our own load client: streamed completions over plain HTTP (no engine's code), the same figures as
`vllm bench serve` for any OpenAI-compatible server (llama.cpp, Transformers, vLLM).

A request counts as an error when the server says so, the connection fails, or the stream ends without
its `data: [DONE]` (a cut stream is never counted as a short success). TTFT: from sending to the first
chunk with text; TPOT: (last token - first token) / (output tokens - 1), per request, then the mean.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from dsv4serve.bench.figures import Level, mean, percentile
from dsv4serve.serving import health as h


def make_prompts(input_len: int, count: int, dataset: list[str] | None = None) -> list[str]:
    """The dataset's prompts in turn, or prompts of about input_len tokens (distinct, so no prefix cache
    serves them whole)."""
    if dataset:
        return [dataset[i % len(dataset)] for i in range(count)]
    words = max(1, input_len - 8)
    return [f"request {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(words)) for i in range(count)]


def _one(base_url: str, model: str, prompt: str, output_len: int, api_key: str | None) -> dict:
    url = urllib.parse.urlsplit(base_url)
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(url.hostname, url.port, timeout=600)
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "ignore_eos": True,  # the asked length, as `vllm bench serve --ignore-eos`
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    t0 = time.perf_counter()
    first = last = None
    chunks = tokens = 0
    try:
        conn.request("POST", url.path.rstrip("/") + "/v1/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}"}
        done = False
        while line := resp.readline():
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                done = True
                break
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"].get("completion_tokens") or tokens
            if any(c.get("text") for c in data.get("choices") or ()):
                last = time.perf_counter()
                first = first or last
                chunks += 1
        if not done:
            return {"error": "the stream ended without [DONE]"}
    except (OSError, ValueError, http.client.HTTPException) as err:
        return {"error": type(err).__name__}
    finally:
        conn.close()
    tokens = tokens or chunks
    result = {"tokens": tokens, "ttft": None, "tpot": None}
    if first is not None:
        result["ttft"] = first - t0
        if tokens > 1 and last is not None:
            result["tpot"] = (last - first) / (tokens - 1)
    return result


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
    lock = threading.Lock()
    results: list[dict] = []

    def send(prompt: str) -> None:
        r = _one(base_url, model, prompt, output_len, api_key)
        with lock:
            results.append(r)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(send, prompts))
    duration = time.perf_counter() - t0
    after = _spec_counters(base_url, api_key)
    good = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in good)
    ttfts = [r["ttft"] * 1000 for r in good if r["ttft"] is not None]
    tpots = [r["tpot"] * 1000 for r in good if r["tpot"] is not None]
    acceptance = None
    if before and after and after[1] > before[1]:
        acceptance = (after[0] - before[0]) / (after[1] - before[1])
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
        acceptance_rate=_round(acceptance, 4),
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
