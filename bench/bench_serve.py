"""`dsv4serve bench`'s two clients on one server: dsv4serve's own against `vllm bench serve` (the anchor),
the same tiny vLLM (CPU build), the same levels and lengths, measured in this run.

Per level, runs of either client in turn; prints the medians, own/vllm ratios, and the spread of vLLM's
runs against each other (the machine's noise): where they agree, the own client's figures for other
engines read like vLLM's.
BENCH_QUICK=1: levels 1 and 4, 2 runs of 8 requests each, 16 tokens out.
"""

from __future__ import annotations

import os
import statistics
import sys

from dsv4serve.bench import client as own
from dsv4serve.bench import vllm_client
from dsv4serve.serving.launch import running_server
from dsv4serve.serving.prepare import prepare_launch

QUICK = os.environ.get("BENCH_QUICK") == "1"
LEVELS = (1, 4) if QUICK else (1, 8, 32)
REQUESTS = 8 if QUICK else 32
ROUNDS = 2 if QUICK else 3
INPUT, OUTPUT = 64, 16 if QUICK else 64
KEYS = ("tokens_per_s", "requests_per_s", "ttft_mean_ms", "ttft_p99_ms", "tpot_mean_ms", "errors")


def _median(levels, key: str) -> float | None:
    values = [getattr(lv, key) for lv in levels if getattr(lv, key) is not None]
    return round(statistics.median(values), 2) if values else None


def _ratio(a, b) -> str:
    return f"{b / a:.2f}" if a and b is not None else "-"


def main() -> int:
    if not vllm_client.installed():
        print("vLLM is not installed: nothing to compare against")
        return 0
    _, spec = prepare_launch("tiny", port=18791, progress=False)
    with running_server(spec) as server:
        url, model = server.base_url, spec.served_model_name
        words = own.fit_words(url, model, INPUT)
        fitted = own.prompt_tokens(url, model, own.prompt_text(0, words)) if words else None
        print(f"own prompts: {words} words, {fitted} tokens as the server counts them (vLLM's: {INPUT})")
        own.run_level(url, model, 1, own.make_prompts(INPUT, 2, None, words), OUTPUT)  # warm the server
        for c in LEVELS:
            anchor, ours = [], []
            for _ in range(ROUNDS):  # in turn, so that a slow spell of the machine falls on both
                anchor.append(vllm_client.run_level(url, model, c, REQUESTS, INPUT, OUTPUT))
                ours.append(
                    own.run_level(url, model, c, own.make_prompts(INPUT, REQUESTS, None, words), OUTPUT)
                )
            print(f"concurrency {c} (medians of {ROUNDS} runs each; vLLM's own spread: its max/min):")
            for key in KEYS:
                a, b = _median(anchor, key), _median(ours, key)
                values = [getattr(lv, key) for lv in anchor if getattr(lv, key)]
                spread = f"{max(values) / min(values):.2f}" if values else "-"
                print(
                    f"  {key:16} vllm bench serve {a!s:>9}  own {b!s:>9}  "
                    f"own/vllm {_ratio(a, b):>5}  (vllm {spread})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
