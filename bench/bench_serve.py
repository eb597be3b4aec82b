"""`dsv4serve bench`'s two clients on one server: dsv4serve's own against `vllm bench serve` (the anchor),
the same tiny vLLM (CPU build), the same levels and lengths, measured in this run.

Prints each client's figures per level and own/vllm ratios: where they agree, the own client's figures
for other engines read like vLLM's. BENCH_QUICK=1: levels 1 and 4, 8 requests each, 16 tokens out.
"""

from __future__ import annotations

import os
import sys

from dsv4serve.bench import client as own
from dsv4serve.bench import vllm_client
from dsv4serve.serving.launch import running_server
from dsv4serve.serving.prepare import prepare_launch

QUICK = os.environ.get("BENCH_QUICK") == "1"
LEVELS = (1, 4) if QUICK else (1, 8, 32)
REQUESTS = 8 if QUICK else 32
INPUT, OUTPUT = 64, 16 if QUICK else 64
KEYS = ("tokens_per_s", "requests_per_s", "ttft_mean_ms", "tpot_mean_ms", "errors")


def main() -> int:
    if not vllm_client.installed():
        print("vLLM is not installed: nothing to compare against")
        return 0
    _, spec = prepare_launch("tiny", port=18791, progress=False)
    with running_server(spec) as server:
        url, model = server.base_url, spec.served_model_name
        own.run_level(url, model, 1, own.make_prompts(INPUT, 2), OUTPUT)  # warm both paths alike
        for c in LEVELS:
            anchor = vllm_client.run_level(url, model, c, REQUESTS, INPUT, OUTPUT)
            ours = own.run_level(url, model, c, own.make_prompts(INPUT, REQUESTS), OUTPUT)
            print(f"concurrency {c}:")
            for key in KEYS:
                a, b = getattr(anchor, key), getattr(ours, key)
                ratio = f"{b / a:.2f}" if a and b is not None else "-"
                print(f"  {key:16} vllm bench serve {a!s:>10}  own {b!s:>10}  own/vllm {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
