"""Time to first token through `dsv4serve route` in its two modes, against a real vLLM (tiny, CPU build).

Arms, one request at a time, the order rotated per prompt: straight to vLLM (the anchor), the router in
classify-first mode (the classifier answers, then the chosen model starts) and in parallel mode (Flash's
answer starts with the classifier call), each with the default compact JSON answer and with
`method: choice` (a one-word answer, fewer classifier tokens). Each request is a new conversation
(its own x-session-id) with a unique prompt, so neither the session cache nor vLLM's prefix cache
helps one arm. Flash and Pro are the same vLLM here: Pro's time to first token is Flash's.

A random-weight model answers "complex" or "simple" with P(complex) near 0.5, leaning one way for every
prompt; so each router's classifier.threshold is calibrated first (the route eval machinery, on that
arm's own prompts) to send half of them to Pro. Printed: TTFT p50 per arm, split by the decision, as
a ratio to direct; and per complex request in parallel mode, the tokens Flash spent on an answer that
was cancelled (vLLM's own counters, less the classifier's and Pro's known shares), and how many of
those answers vLLM stopped before their end (fewer tokens than the answer's min_tokens).
BENCH_QUICK=1: 8 prompts; BENCH_ROUTER_UPSTREAM=http://127.0.0.1:PORT reuses a running tiny vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_router import free_port, start, stop

QUICK = os.environ.get("BENCH_QUICK") == "1"
PROMPTS = 8 if QUICK else 24
TOKENS = 96  # an answer long enough to be still running when the classifier answers
PROFILE = """\
name: {name}
mode: {mode}
classifier:
  prompt: "Classify: complex = code generation or logical calculation; otherwise simple."
  method: {method}
  timeout_s: 120
  threshold: {threshold}
"""
ARMS = {  # name: (mode, method); None: straight to vLLM
    "direct": None,
    "classify-first": ("classify-first", "compact_json"),
    "classify-first+choice": ("classify-first", "choice"),
    "parallel": ("parallel", "compact_json"),
    "parallel+choice": ("parallel", "choice"),
}
COUNTERS = {
    "prompt": "vllm:prompt_tokens_total",
    "generation": "vllm:generation_tokens_total",
}


def counters(url: str) -> dict[str, float]:
    """vLLM's (or the router's) counters named in COUNTERS, summed over their label sets."""
    text = httpx.get(url + "/metrics", trust_env=False, timeout=30).text
    out = dict.fromkeys(COUNTERS, 0.0)
    out["classifier_prompt"] = out["classifier_completion"] = 0.0
    for line in text.splitlines():
        for key, name in COUNTERS.items():
            if line.startswith(name):
                out[key] += float(line.rsplit(" ", 1)[1])
        for kind in ("prompt", "completion"):
            if line.startswith(f'dsv4serve_route_classifier_tokens_total{{kind="{kind}"}}'):
                out[f"classifier_{kind}"] += float(line.rsplit(" ", 1)[1])
    return out


async def one(base: str, model: str, text: str, session: str) -> dict:
    """One streaming chat completion: TTFT, the route and reason, and the answer's prompt tokens."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": TOKENS,
        "min_tokens": TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, prompt_tokens = None, 0
    async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
        headers = {"x-session-id": session}
        async with client.stream("POST", base + "/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                raise SystemExit(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
            route = resp.headers.get("x-dsv4serve-route", "direct")
            reason = resp.headers.get("x-dsv4serve-route-reason", "")
            async for line in resp.aiter_lines():
                if first is None and '"content":"' in line.replace(" ", ""):
                    first = time.perf_counter() - t0
                if '"usage":{' in line.replace(" ", "") and '"prompt_tokens"' in line:
                    usage = json.loads(line[6:]).get("usage") or {}
                    prompt_tokens = usage.get("prompt_tokens", 0)
    return {"ttft": first or 0.0, "route": route, "reason": reason, "prompt_tokens": prompt_tokens}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-route-modes-"))
    procs = []
    try:
        upstream = os.environ.get("BENCH_ROUTER_UPSTREAM")
        if not upstream:
            port = free_port()
            upstream = f"http://127.0.0.1:{port}"
            procs.append(
                start(["up", "tiny", "--port", str(port)], upstream + "/v1/models", 300, tmp, "vllm")
            )
        model = httpx.get(upstream + "/v1/models", trust_env=False).json()["data"][0]["id"]
        texts = {
            arm: [f"[{arm} {i}] Write a short note about topic number {i * 7 + 3}." for i in range(PROMPTS)]
            for arm in ARMS
        }
        urls = {"direct": upstream}
        for arm, spec in ARMS.items():
            if spec is None:
                continue
            profile = tmp / f"{arm}.yaml"
            name = arm.replace("+", "-")
            profile.write_text(PROFILE.format(name=name, mode=spec[0], method=spec[1], threshold="null"))
            threshold = calibrate(profile, upstream, texts[arm])
            profile.write_text(PROFILE.format(name=name, mode=spec[0], method=spec[1], threshold=threshold))
            rport = free_port()
            argv = ["route", str(profile), "--flash", upstream, "--pro", upstream, "--port", str(rport)]
            url = f"http://127.0.0.1:{rport}"
            procs.append(start([*argv, "--workers", "1"], url + "/v1/models", 60, tmp, arm))
            urls[arm] = url
        for arm, url in urls.items():  # warm: the first structured-output call compiles its grammar
            asyncio.run(one(url, model if arm == "direct" else "auto", f"warm up {arm}", f"warm-{arm}"))
        results: dict[str, list[dict]] = {arm: [] for arm in urls}
        names = list(urls)
        for i in range(PROMPTS):
            for k in range(len(names)):
                arm = names[(i + k) % len(names)]
                text = texts[arm][i]
                before = counters(upstream), counters(urls[arm])
                r = asyncio.run(one(urls[arm], model if arm == "direct" else "auto", text, f"{arm}-{i}"))
                time.sleep(0.5)  # a cancelled answer's last steps are counted
                after = counters(upstream), counters(urls[arm])
                r["delta"] = {key: after[0][key] - before[0][key] for key in COUNTERS}
                r["classifier"] = {
                    key: after[1][f"classifier_{key}"] - before[1][f"classifier_{key}"]
                    for key in ("prompt", "completion")
                }
                results[arm].append(r)
            print(f"prompt {i + 1}/{PROMPTS} done", flush=True)
        report(results)
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)


def calibrate(profile: Path, upstream: str, texts: list[str]) -> float:
    """classifier.threshold halfway between the two middle P(complex) of these prompts: half go to Pro."""
    from dsv4serve.router import eval_dataset, evaluate
    from dsv4serve.router.profile import load_router_profile
    from dsv4serve.router.upstreams import Upstream

    examples = [
        eval_dataset.Example(i, ({"role": "user", "content": t},), "simple", "") for i, t in enumerate(texts)
    ]
    outcomes = evaluate.evaluate(
        load_router_profile(str(profile)), Upstream("flash", upstream), None, examples
    )
    ps = sorted(o.p_complex for o in outcomes if o.p_complex is not None)
    if len(ps) < 2:
        raise SystemExit(f"{profile.stem}: the classifier's answers carry no logprobs")
    mid = len(ps) // 2
    return round((ps[mid - 1] + ps[mid]) / 2, 9)


def report(results: dict[str, list[dict]]) -> None:
    anchor = statistics.median(r["ttft"] for r in results["direct"])
    print(f"time to first token, one request at a time, {PROMPTS} prompts per arm (p50; ratio to direct):")
    print(f"  {'direct to vLLM':30}  {anchor * 1000:8.1f} ms  1.000")
    for arm, rows in results.items():
        if arm == "direct":
            continue
        for level in ("simple", "complex"):
            got = [r["ttft"] for r in rows if r["reason"] == f"classified-{level}"]
            if not got:
                print(f"  {arm:22} {level:7}  none classified {level}")
                continue
            p50 = statistics.median(got)
            print(
                f"  {arm:22} {level:7}  {p50 * 1000:8.1f} ms  {p50 / anchor:.3f}  "
                f"(added {(p50 - anchor) * 1000:+.1f} ms, {len(got)} requests)"
            )
    print("Flash's work on complex requests in parallel mode (cancelled before any byte reached the client):")
    for arm in ("parallel", "parallel+choice"):
        complex_ = [r for r in results[arm] if r["reason"] == "classified-complex"]
        if not complex_:
            print(f"  {arm}: no complex request among {PROMPTS}")
            continue
        wasted_gen = [r["delta"]["generation"] - r["classifier"]["completion"] - TOKENS for r in complex_]
        wasted_prompt = [
            r["delta"]["prompt"] - r["classifier"]["prompt"] - r["prompt_tokens"] for r in complex_
        ]
        cut = sum(w < TOKENS for w in wasted_gen)
        print(
            f"  {arm}: {len(complex_)} complex, Flash stopped early in {cut}; wasted per request: "
            f"{statistics.fmean(wasted_gen):.1f} generated + {statistics.fmean(wasted_prompt):.1f} prompt "
            f"tokens (the answer is {TOKENS} generated)"
        )
        simple = [r for r in results[arm] if r["reason"] == "classified-simple"]
        if simple:
            extra = [r["delta"]["generation"] - r["classifier"]["completion"] - TOKENS for r in simple]
            extra_mean = statistics.fmean(extra)
            print(f"  {arm}: simple requests, generated beyond answer + classifier: {extra_mean:.1f}")


if __name__ == "__main__":
    sys.exit(main())
