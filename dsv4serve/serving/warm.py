"""Traffic warm-up before `up` says ready: the request shapes the first minutes of traffic will hit.

A DeepSeek-V4 server that answers one token can still stall for minutes on its first batch of 64
concurrent requests while kernels compile for the new shapes (DeepGEMM's JIT for each new GEMM size,
Triton and TileLang kernels; seen on an H200, docs/validation.md). So before ready, rounds of 1, 8 and
64 concurrent completions run: every request a prompt of its own (no prefix-cache hit), a few decode
steps each, and one long prompt for the largest prefill chunk. Their time is the start-up's price,
reported with the round sizes; the rounds that come after ready then find the kernels compiled.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

from dsv4serve.serving.local_http import OPENER, json_headers

DEFAULT_ROUNDS = (1, 8, 64)
DECODE_TOKENS = 16  # decode steps per request: batch sizes 1..c are stepped through as requests end
LONG_PROMPT_WORDS = 1500  # ~1.5-2k tokens: a prefill chunk of the size long prompts bring


def _prompt(i: int, words: int) -> str:
    # Distinct from the first word on, so no request reuses another's cached prefix.
    return f"request {i}: " + " ".join(f"w{(i * 7919 + k) % 10007}" for k in range(words))


def _complete(base_url: str, model: str, headers: dict, prompt: str, timeout_s: float) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": DECODE_TOKENS, "ignore_eos": True}
    req = urllib.request.Request(
        base_url + "/v1/completions", data=json.dumps(body).encode(), headers=headers
    )
    with OPENER.open(req, timeout=timeout_s) as resp:
        resp.read()


def run_round(
    base_url: str,
    model: str,
    concurrency: int,
    words: int,
    timeout_s: float,
    key: str | None = None,
    start: int = 0,
) -> float:
    """`concurrency` completions at once, prompts of `words` words; seconds until the last answered.
    Raises OSError (or urllib's HTTPError) if any request failed."""
    headers = json_headers(key)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            _complete(base_url, model, headers, _prompt(start + i, words), timeout_s)
        except (OSError, ValueError) as err:  # urllib's errors are OSErrors
            errors.append(err)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5.0)
    took = time.monotonic() - t0
    if errors:
        raise OSError(f"{len(errors)} of {concurrency} warm-up requests failed: {errors[0]}")
    return took


def warm_traffic(
    base_url: str,
    model: str,
    rounds: Sequence[int],
    timeout_s: float,
    key: str | None = None,
    say: Callable[[str], None] = lambda _text: None,
) -> list[tuple[str, float]]:
    """The warm-up rounds: one long prompt, then each concurrency with short prompts. [(what, s)]."""
    done: list[tuple[str, float]] = []
    took = run_round(base_url, model, 1, LONG_PROMPT_WORDS, timeout_s, key, start=10_000)
    done.append((f"1 x {LONG_PROMPT_WORDS}-word prompt", took))
    say(f"traffic warm-up: long prompt {took:.1f} s")
    for n, c in enumerate(rounds):
        took = run_round(base_url, model, c, 64, timeout_s, key, start=20_000 + 1000 * n)
        done.append((f"{c} concurrent", took))
        say(f"traffic warm-up: {c} concurrent {took:.1f} s")
    return done
