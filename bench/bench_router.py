"""`dsv4serve route` in front of a real vLLM (the tiny profile, CPU build): what the proxy adds.

1. Latency: rounds of 100 concurrent streaming chat requests, alternately straight to vLLM and through
   the router (rounds alternate so drift on a busy machine hits both alike). The router's profile routes
   every request by a rule, so the classifier call is excluded. Printed: time to first token and total,
   p50/p99, router minus direct and the ratio router/direct (the anchor); the router's own pre-upstream
   time, exact per request (its x-dsv4serve-proxy-ms header) and interpolated from its histogram
   (dsv4serve_route_proxy_overhead_seconds); and the router process's CPU seconds per 100 streams.
2. Load: 500 streaming requests, 100 at a time, through the router: errors and lost answers must be 0.
3. The classifier's cost: one classified request's latency and tokens, as /metrics reports them.

Goal (issue 14): added p50 < 2 ms and p99 < 10 ms; zero errors. BENCH_QUICK=1: 1 round, 200 requests.
BENCH_ROUTER_UPSTREAM=http://127.0.0.1:PORT uses a tiny vLLM already running instead of starting one.
BENCH_ROUTER_WORKERS=1,4: the router's --workers values to compare, one router each (default: 1 and
route's own default, which is 1 on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

QUICK = os.environ.get("BENCH_QUICK") == "1"
ROUNDS = 1 if QUICK else 3
CONCURRENCY = 100
LOAD_REQUESTS = 200 if QUICK else 500
TOKENS = 16
PROFILE = """\
name: bench
classifier:
  prompt: "Classify: complex = code generation or logical calculation; otherwise simple."
  max_tokens: 32
  timeout_s: 120
rules:
  - {name: all, route: flash, when: {min_chars: 0}}  # every request: the classifier stays out
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, limit: float, log: Path) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[3:5]} exited {proc.returncode}; log: {log}")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {limit:.0f} s; log: {log}")


def start(args: list[str], ready_url: str, limit: float, tmp: Path, name: str) -> subprocess.Popen:
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsv4serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_ready(ready_url, proc, limit, log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


FAILURES: list[str] = []  # what went wrong, for the report
MODEL = {"name": "tiny"}  # the upstream's served model, read from its /v1/models in main()


async def one(client: httpx.AsyncClient, base: str, i: int) -> tuple[float, float, bool, float | None]:
    """One streaming chat completion: (time to first token, total, complete, the router's own time in s
    from its x-dsv4serve-proxy-ms header or None when direct)."""
    body = {
        "model": MODEL["name"],
        "messages": [{"role": "user", "content": f"request {i}: tell me something"}],
        "max_tokens": TOKENS,
        "min_tokens": TOKENS,  # a random-weight model may stop at once otherwise
        "stream": True,
    }
    t0 = time.perf_counter()
    first, done = None, False
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            FAILURES.append(f"HTTP {resp.status_code} {resp.headers.get('x-dsv4serve-route-reason')}: {text}")
            return 0.0, time.perf_counter() - t0, False, None
        own = resp.headers.get("x-dsv4serve-proxy-ms")
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                first = time.perf_counter() - t0
            done = done or line == "data: [DONE]"
    if not (done and first is not None):
        FAILURES.append(f"stream ended early: first token {first}, [DONE] {done}")
    ok = done and first is not None
    return first or 0.0, time.perf_counter() - t0, ok, float(own) / 1000 if own else None


def client_procs() -> int:
    """Load-generating processes: one Python event loop relaying 100 fast streams is itself the
    bottleneck (it sends request bodies late and reads chunks late), so on a machine with cores to
    spare the streams are spread over several. BENCH_CLIENT_PROCS overrides."""
    given = os.environ.get("BENCH_CLIENT_PROCS")
    return int(given) if given else max(1, min(8, len(os.sched_getaffinity(0)) // 2))


def _batch_part(base: str, n: int, concurrency: int, offset: int) -> tuple[list[tuple], int, list[str]]:
    FAILURES.clear()  # a forked copy of the parent's: return only this part's
    results, errors, _ = asyncio.run(_batch(base, n, concurrency, offset))
    return results, errors, FAILURES


async def batch(base: str, n: int, concurrency: int) -> tuple[list[tuple], int, float]:
    """n requests, `concurrency` in flight at once, over client_procs() processes: results, errors
    (exceptions included), wall time."""
    procs = min(client_procs(), concurrency)
    if procs == 1:
        return await _batch(base, n, concurrency)
    import multiprocessing

    parts = [
        (
            base,
            n * (i + 1) // procs - n * i // procs,
            concurrency * (i + 1) // procs - concurrency * i // procs,
        )
        for i in range(procs)
    ]
    args = [(b, k, c, sum(p[1] for p in parts[:i])) for i, (b, k, c) in enumerate(parts)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        outs = await asyncio.get_running_loop().run_in_executor(None, pool.starmap, _batch_part, args)
    wall = time.perf_counter() - t0
    for _, _, failures in outs:
        FAILURES.extend(failures)
    return [r for out in outs for r in out[0]], sum(out[1] for out in outs), wall


async def _batch(base: str, n: int, concurrency: int, offset: int = 0) -> tuple[list[tuple], int, float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    errors = 0

    async def guarded(client, i):
        nonlocal errors
        async with sem:
            try:
                return await one(client, base, i)
            except httpx.HTTPError as err:
                FAILURES.append(f"{type(err).__name__}: {err}")
                errors += 1
                return (0.0, 0.0, False, None)

    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(guarded(client, offset + i) for i in range(n)))
        wall = time.perf_counter() - t0
    errors += sum(1 for r in results if not r[2])
    return results, errors, wall


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram in the text format."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float(le), float(line.rsplit(" ", 1)[1])))
    return out


def histogram_quantile(before: str, after: str, name: str, q: float) -> str:
    """Quantile q of the observations made between two scrapes, interpolated linearly inside its bucket
    (as Prometheus' histogram_quantile does)."""
    counts = [
        (le, b - a) for (le, b), (_, a) in zip(buckets(after, name), buckets(before, name), strict=True)
    ]
    rank, low, below = q * counts[-1][1], 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if le == float("inf"):
                return f"> {low * 1000:g} ms"
            value = low + (le - low) * (rank - below) / max(count - below, 1e-9)
            return f"{value * 1000:.2f} ms"
        low, below = le, count
    return "n/a"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children: the router's workers (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for p in [pid, *map(int, children)]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def own_times(label: str, routed: list) -> tuple[float, float]:
    """p50/p99 (ms) of the router's own pre-upstream time, exact, from each answer's x-dsv4serve-proxy-ms."""
    own = [x[3] for x in routed if x[3] is not None]
    if not own:
        return float("nan"), float("nan")
    p50, p99 = (pct(own, q) * 1000 for q in (50, 99))
    print(
        f"  router's own time before the upstream ({label}, {len(own)} requests): "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    return p50, p99


def worker_counts() -> list[int]:
    from dsv4serve.router.workers import default_workers

    given = os.environ.get("BENCH_ROUTER_WORKERS")
    counts = [int(w) for w in given.split(",")] if given else [1, default_workers()]
    return list(dict.fromkeys(counts))


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    procs: list[subprocess.Popen] = []
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; router workers compared: {worker_counts()}; client processes: {client_procs()}")
    try:
        upstream = os.environ.get("BENCH_ROUTER_UPSTREAM")
        if not upstream:
            port = free_port()
            upstream = f"http://127.0.0.1:{port}"
            t0 = time.monotonic()
            up = ["up", "tiny", "--port", str(port)]
            procs.append(start(up, upstream + "/v1/models", 300, tmp, "vllm"))
            print(f"tiny vLLM ready in {time.monotonic() - t0:.1f} s at {upstream}", flush=True)
        MODEL["name"] = httpx.get(upstream + "/v1/models", trust_env=False).json()["data"][0]["id"]
        (tmp / "bench.yaml").write_text(PROFILE)
        errors, summary = 0, []
        for n, workers in enumerate(worker_counts()):
            rport = free_port()
            router = f"http://127.0.0.1:{rport}"
            route = ["route", str(tmp / "bench.yaml"), "--flash", upstream, "--pro", upstream]
            route += ["--port", str(rport), "--workers", str(workers)]
            proc = start(route, router + "/v1/models", 30, tmp, f"router-{workers}")
            procs.append(proc)
            print(f"--- router with {workers} worker(s) ---", flush=True)
            asyncio.run(batch(upstream, 8, 8))  # warm both paths (first requests compile, connect)
            asyncio.run(batch(router, 2 * CONCURRENCY, CONCURRENCY))  # every worker connects upstream
            if n == 0:
                sequential(upstream, router)
            burst = concurrent(upstream, router, proc.pid)
            load_errors, steady = load(upstream, router)
            errors += load_errors
            summary.append((workers, burst, steady))
            stop(proc)
            procs.remove(proc)
        print("router's own time before the upstream, exact (goal: p50 < 2 ms, p99 < 10 ms):")
        for workers, burst, steady in summary:
            print(
                f"  {workers} worker(s): rounds of {CONCURRENCY} at once p50 {burst[0]:.2f} / "
                f"p99 {burst[1]:.2f} ms; {CONCURRENCY} in flight (load) p50 {steady[0]:.2f} / "
                f"p99 {steady[1]:.2f} ms"
            )
        classifier_cost(upstream)
        for failure in dict.fromkeys(FAILURES):
            print(f"failure ({FAILURES.count(failure)}x): {failure[:300]}")
        return 1 if errors else 0
    finally:
        for proc in reversed(procs):
            stop(proc)


def sequential(upstream: str, router: str) -> None:
    """One request at a time, direct and routed alternately: the proxy's cost without CPU contention."""
    rounds = 10 if QUICK else 50

    async def run() -> tuple[list, list]:
        direct, routed = [], []
        async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
            for i in range(rounds):
                direct.append(await one(client, upstream, i))
                routed.append(await one(client, router, i))
        return direct, routed

    direct, routed = asyncio.run(run())
    print(f"one request at a time, {rounds} each, alternating:")
    report("time to first token", direct, routed, 0)
    report("total per request  ", direct, routed, 1)
    own_times("header", routed)


def concurrent(upstream: str, router: str, router_pid: int) -> tuple[float, float]:
    """Rounds of CONCURRENCY streams at once, direct then routed; and the router's own histogram."""
    print(f"{CONCURRENCY} concurrent streams, {ROUNDS} round(s):")
    direct: list[tuple[float, float, bool]] = []
    routed: list[tuple[float, float, bool]] = []
    before = httpx.get(router + "/metrics", trust_env=False).text
    cpu = []
    for r in range(ROUNDS):
        d, d_err, d_wall = asyncio.run(batch(upstream, CONCURRENCY, CONCURRENCY))
        c0 = cpu_seconds(router_pid)
        g, g_err, g_wall = asyncio.run(batch(router, CONCURRENCY, CONCURRENCY))
        cpu.append(cpu_seconds(router_pid) - c0)
        direct += d
        routed += g
        print(
            f"round {r + 1}: direct {d_wall:.2f} s ({d_err} errors), router {g_wall:.2f} s ({g_err} errors)",
            flush=True,
        )
    report("time to first token", direct, routed, 0)
    report("total per request  ", direct, routed, 1)
    after = httpx.get(router + "/metrics", trust_env=False).text
    name = "dsv4serve_route_proxy_overhead_seconds"
    p50, p99 = (histogram_quantile(before, after, name, q) for q in (0.5, 0.99))
    exact = own_times("header", routed)
    print(f"  router's own time before the upstream (histogram, interpolated): p50 {p50}, p99 {p99}")
    per100 = statistics.median(cpu) * 100 / CONCURRENCY
    print(
        f"  router CPU per 100 streams (all workers): {per100:.3f} s (median of {ROUNDS} rounds)", flush=True
    )
    return exact


def load(upstream: str, router: str) -> tuple[int, tuple[float, float]]:
    """LOAD_REQUESTS streams, CONCURRENCY in flight, through the router then direct: errors + lost, and
    the router's own time once a stream starts as another ends (arrivals spread, not one burst)."""
    results, errors, wall = asyncio.run(batch(router, LOAD_REQUESTS, CONCURRENCY))
    lost = LOAD_REQUESTS - len(results)
    _, d_errors, d_wall = asyncio.run(batch(upstream, LOAD_REQUESTS, CONCURRENCY))
    print(
        f"load: {LOAD_REQUESTS} streams at {CONCURRENCY} concurrent through the router in {wall:.2f} s "
        f"({LOAD_REQUESTS / wall:.1f} req/s): {errors} errors, {lost} lost; direct {d_wall:.2f} s "
        f"({d_errors} errors); ratio router/direct {wall / d_wall:.3f}"
    )
    return errors + lost, own_times("load", results)


def report(what: str, direct: list, routed: list, field: int) -> None:
    d_ok = [x[field] for x in direct if x[2]]
    g_ok = [x[field] for x in routed if x[2]]
    for q in (50, 99):
        d, g = pct(d_ok, q), pct(g_ok, q)
        print(
            f"  {what} p{q}: direct {d * 1000:8.1f} ms, router {g * 1000:8.1f} ms, "
            f"added {(g - d) * 1000:+7.1f} ms, ratio {g / d:.3f}",
            flush=True,
        )


def classifier_cost(upstream: str) -> None:
    """The default profile's classifier call on this vLLM: latency and tokens (route --explain)."""
    prompt = "Write a function that merges two sorted lists."
    argv = [sys.executable, "-m", "dsv4serve", "route", "--flash", upstream, "--explain", prompt, "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit(f"route --explain failed: {out.stderr}")
    e = json.loads(out.stdout)
    tokens = f"{e['prompt_tokens']} prompt + {e['completion_tokens']} completion tokens"
    print(
        f"classifier (default profile): {e['classifier_ms']:.0f} ms, {tokens} -> {e['route']} ({e['reason']})"
    )


if __name__ == "__main__":
    sys.exit(main())
