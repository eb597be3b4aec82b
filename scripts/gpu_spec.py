"""tiny-v4 with and without MTP speculative decoding on one GPU (issue 19), one device call per mode.

Run from the project root on the one-GPU H200 machine after the recipe's setup
(../shared/recipes/vllm-gpu-v4/README.md), each call well inside a device call's 10 minutes:

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_spec.py run $OUT --spec off
    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_spec.py run $OUT --spec mtp

Each call: `dsv4serve up tiny-v4 --gpus 1 -d --warmup skip --spec MODE` as a user runs it (the plan's
JSON kept), `smoke`-style checks (plain, thinking, tools), then ROUNDS streamed chat completions
through the chat endpoint (the facts: raw completions depress the acceptance rate), each MAX_TOKENS
long: decode tokens/s after the first token, and vLLM's /metrics spec-decode counters (accepted over
drafted tokens) before and after; then `dsv4serve stop`. SPEC-MODE.json holds it all. The JIT caches
live under XDG_CACHE_HOME (default /tmp/gpuspec/xdg: /tmp survives between calls on a warm machine), so
the second mode starts warm. `--profile tiny --spec off` runs the same on the CPU build (a dry run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "dsv4serve"]
WORK = Path("/tmp/gpuspec")
ROUNDS, MAX_TOKENS = 8, 128
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local traffic, no proxy


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def metrics(base: str) -> dict[str, float]:
    from dsv4serve.serving.health import parse_metrics

    with _OPENER.open(base + "/metrics", timeout=10) as resp:
        return parse_metrics(resp.read().decode())


def stream_once(base: str, model: str, prompt: str, thinking_off: bool) -> dict:
    """One streamed chat completion: tokens, time to first token, decode tokens/s after the first."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "min_tokens": MAX_TOKENS,  # random weights stop early otherwise: the same length in both modes
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if thinking_off:
        body["chat_template_kwargs"] = {"thinking": False}
    req = urllib.request.Request(
        base + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    t0, first, last, tokens = time.monotonic(), None, None, 0
    with _OPENER.open(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content"):
                    last = time.monotonic()
                    first = first or last
    decode = (last - first) if first and last else 0.0
    return {
        "tokens": tokens,
        "ttft_s": round(first - t0, 3) if first else None,
        "decode_tokens_per_s": round((tokens - 1) / decode, 1) if tokens > 1 and decode > 0 else None,
    }


def run(out: Path, spec: str, profile: str, gpus: str) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(WORK / "xdg"))}
    env["XDG_STATE_HOME"] = str(WORK / "state")
    name = f"spec-{spec}"
    result: dict = {"profile": profile, "spec": spec, "name": name}
    plan_args = [*CLI, "plan", profile, "--json", "--spec", spec]
    if profile != "tiny":
        plan_args += ["--gpus", gpus]
    plan = subprocess.run(plan_args, capture_output=True, text=True, env=env, timeout=120)
    result["plan"] = json.loads(plan.stdout) if plan.stdout.strip().startswith("{") else plan.stderr
    up = [*CLI, "up", profile, "-d", "--json", "--name", name, "--spec", spec]
    up += ["--warmup", "skip"] if profile != "tiny" else []
    up += ["--gpus", gpus] if profile != "tiny" else []
    log("up: " + " ".join(up[2:]))
    t0 = time.monotonic()
    started = subprocess.run(up, capture_output=True, text=True, env=env, timeout=580)
    result["up_s"] = round(time.monotonic() - t0, 1)
    result["up_rc"], result["up_stderr"] = started.returncode, started.stderr[-4000:]
    (out / f"{name}.partial.json").write_text(json.dumps(result, indent=1))
    if started.returncode:
        return result
    ready: dict = {}
    try:
        ready = json.loads(started.stdout)  # up -d --json: one document once ready
        base, model = ready["endpoint"].removesuffix("/v1"), ready["model"]
        result["ready"] = ready
        v4 = profile != "tiny"
        if v4:
            from dsv4serve.serving.checks import as_dicts, run_checks

            try:
                result["checks"] = as_dicts(run_checks(base, model))
            except Exception as err:  # recorded, the measurement goes on
                result["checks_error"] = str(err)
        before = metrics(base)
        runs = [
            stream_once(base, model, f"Count to {i + 10} in words, then stop.", v4) for i in range(ROUNDS)
        ]
        after = metrics(base)
        result["runs"] = runs
        rates = [r["decode_tokens_per_s"] for r in runs[1:] if r["decode_tokens_per_s"]]  # first: warm-up
        result["decode_tokens_per_s_median"] = statistics.median(rates) if rates else None
        from dsv4serve.serving.health import SPEC_ACCEPTED, SPEC_DRAFTED, pick

        drafted = (pick(after, SPEC_DRAFTED) or 0) - (pick(before, SPEC_DRAFTED) or 0)
        accepted = (pick(after, SPEC_ACCEPTED) or 0) - (pick(before, SPEC_ACCEPTED) or 0)
        result["spec_decode"] = {
            "drafted": drafted,
            "accepted": accepted,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
            "metrics": {k: v for k, v in after.items() if "spec_decode" in k},
        }
        median = result["decode_tokens_per_s_median"]
        log(f"{name}: decode median {median} tok/s, spec decoding {result['spec_decode']}")
    finally:
        stop = subprocess.run([*CLI, "stop", name], capture_output=True, text=True, env=env, timeout=120)
        result["stop_rc"] = stop.returncode
        log_file = ready.get("log")
        if log_file and Path(log_file).is_file():
            (out / f"{name}.vllm.log").write_text(Path(log_file).read_text(errors="replace")[-200_000:])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--spec", choices=["off", "mtp"], required=True)
    ap.add_argument("--profile", default="tiny-v4")
    ap.add_argument("--gpus", default="1")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    result = run(a.out, a.spec, a.profile, a.gpus)
    (a.out / f"spec-{a.spec}.json").write_text(json.dumps(result, indent=1))
    return 0 if result.get("up_rc") == 0 and result.get("stop_rc") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
