"""Time-to-ready of `dsv4serve up tiny` against a bare vLLM serve with the same argv and environment.

Rounds alternate (bare, dsv4serve, bare, ...) so drift on a busy machine hits both alike. Ready means
the same for both: /health answers 200 and a one-token completion succeeds (dsv4serve's own definition;
for dsv4serve the clock stops when it prints its ready line). Goal: ratio <= 1.05.
BENCH_QUICK=1: one round each.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from dsv4serve.serving import procs
from dsv4serve.serving.prepare import prepare_launch

ROUNDS = 1 if os.environ.get("BENCH_QUICK") == "1" else 3
PROBE_S = 0.2  # the launcher's default probe interval
LIMIT_S = 300.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(port: int) -> bool:
    """/health 200, then a one-token completion: the same test dsv4serve applies."""
    base = f"http://127.0.0.1:{port}"
    try:
        with _OPENER.open(base + "/health", timeout=2) as resp:
            if resp.status != 200:
                return False
        body = json.dumps({"model": "tiny", "prompt": "ready?", "max_tokens": 1}).encode()
        req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
        with _OPENER.open(req, timeout=30) as resp:
            return bool(json.loads(resp.read()).get("choices"))
    except (OSError, ValueError):
        return False


def stop_group(pgid: int) -> None:
    procs.signal_group(pgid, signal.SIGTERM)
    if not procs.wait_group_gone(pgid, 20):
        procs.signal_group(pgid, signal.SIGKILL)
        procs.wait_group_gone(pgid, 5)


def bare_round() -> float:
    port = free_port()
    _, spec = prepare_launch("tiny", port=port, progress=False)
    tmp = tempfile.mkdtemp(prefix="bench-vllm-")
    env = {**os.environ, **spec.env, "TMPDIR": tmp}
    with open(os.path.join(tmp, "log"), "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            list(spec.argv), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True
        )
        try:
            while not answers(port):
                if proc.poll() is not None or time.monotonic() - t0 > LIMIT_S:
                    raise SystemExit(f"bare vLLM did not become ready (rc={proc.poll()}); log in {tmp}")
                time.sleep(PROBE_S)
            return time.monotonic() - t0
        finally:
            stop_group(proc.pid)
            proc.wait()


def dsv4serve_round() -> float:
    port = free_port()
    argv = [sys.executable, "-m", "dsv4serve", "up", "tiny", "--json", "--port", str(port)]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if '"event": "ready"' in line:
                return time.monotonic() - t0
        raise SystemExit(f"dsv4serve up tiny exited with {proc.wait()} before it was ready")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    prepare_launch("tiny", port=free_port(), progress=False)  # the checkpoint exists before round one
    bare: list[float] = []
    ours: list[float] = []
    for i in range(ROUNDS):
        bare.append(bare_round())
        print(f"round {i + 1}: bare vLLM serve   ready in {bare[-1]:6.2f} s", flush=True)
        ours.append(dsv4serve_round())
        print(f"round {i + 1}: dsv4serve up tiny ready in {ours[-1]:6.2f} s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"median time-to-ready: bare {b:.2f} s, dsv4serve {o:.2f} s over {ROUNDS} round(s)")
    print(f"ratio dsv4serve/bare: {o / b:.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
