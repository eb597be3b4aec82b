"""The same greedy request on tiny-v4 through vLLM (GPU) and Transformers (CPU, bf16), and llama.cpp
when llama-server is there: their first tokens, for the record (issue 21 part 5). One device call:

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_engines.py $OUT [--gpus 1]

Each engine is started by `dsv4serve up tiny-v4 --engine E --json` as a user runs it, asked one
/v1/completions (temperature 0, 8 tokens, the prompt below), then stopped with SIGINT. Transformers
and llama.cpp run with CUDA_VISIBLE_DEVICES="" (the CPU path CI tests). OUT/engines.json holds the
texts, whether they agree, and each start's time to ready.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROMPT = "The capital of France is"  # the one tests/test_engines_live.py compares on the CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_document(proc) -> dict:
    """The first JSON document `up --json` prints (indented over several lines)."""
    text = ""
    for line in proc.stdout:
        text += line
        try:
            return json.loads(text)
        except ValueError:
            continue
    return {"error": {"message": text.strip() or f"no output, exit {proc.wait()}"}}


def serve_once(engine: str, extra: list[str], env: dict[str, str], timeout: float) -> dict:
    port = free_port()
    argv = [sys.executable, "-m", "dsv4serve", "up", "tiny-v4", "--engine", engine, "--json"]
    proc = subprocess.Popen([*argv, "--port", str(port), *extra], stdout=subprocess.PIPE, env=env, text=True)
    t0 = time.monotonic()
    try:
        ready = read_document(proc)  # the ready document, or the error's (the start failed)
        if "error" in ready:
            return {"engine": engine, "error": ready["error"], "exit": proc.wait(60)}
        body = {"model": ready["model"], "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=timeout) as resp:
            text = json.loads(resp.read())["choices"][0]["text"]
        return {"engine": engine, "text": text, "ready_s": ready["ready_s"], "wall_s": time.monotonic() - t0}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--gpus", default="1")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    runs = [serve_once("vllm", ["--gpus", args.gpus, "--warmup", "skip"], dict(os.environ), 900)]
    runs.append(serve_once("transformers", [], cpu, 300))
    from dsv4serve.engines.llamacpp.binary import find_server

    if find_server():
        runs.append(serve_once("llama.cpp", [], cpu, 300))
    texts = {r["engine"]: r.get("text") for r in runs}
    same = None not in texts.values() and len(set(texts.values())) == 1  # every engine answered, alike
    result = {"prompt": PROMPT, "runs": runs, "same": same}
    (out / "engines.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
