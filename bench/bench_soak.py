"""A soak: `dsv4serve up tiny` (the real vLLM CPU build, health watch on) behind `dsv4serve route`,
under steady load for SOAK_S seconds (default 120, also under BENCH_QUICK: CI's two-minute soak).

Load: SOAK_STREAMS client threads (default 4), each sending one streamed chat completion after another
through the router (its profile routes every request by a rule, so the classifier stays out).

Printed, per window of SOAK_WINDOW_S (default 30 s): requests/s and p50 latency, each as a ratio to the
first window (the anchor, measured in the same run); the server group's memory (RSS summed over its
processes, as the watch reads it on a CPU) sampled every second, its growth and slope; the watch's
health events from `up --json`.

Exit 1 when the soak broke what it holds a server to, never on a timing: a request lost (no complete
answer and no error the client was told), an error, a `stalled` or `memory-growth` from the watch
(false alarms under steady load), or the group's memory grown past the watch's margin.
SOAK_FAULT_AT_S=T stops vLLM's engine core for 40 s at T s, to see the soak fail.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from bench_router import free_port, start, stop

from dsv4serve.serving import health, procs

SOAK_S = float(os.environ.get("SOAK_S", "120"))
WINDOW_S = float(os.environ.get("SOAK_WINDOW_S", "30"))
STREAMS = int(os.environ.get("SOAK_STREAMS", "4"))
FAULT_AT_S = float(os.environ["SOAK_FAULT_AT_S"]) if os.environ.get("SOAK_FAULT_AT_S") else None
TOKENS = 16
MARGIN = 512 * 2**20  # the watch's default margin on a CPU (serving/health.py default_watch)
ROUTER_PROFILE = """\
name: soak
classifier:
  prompt: "Classify: complex = code generation or logical calculation; otherwise simple."
  max_tokens: 32
  timeout_s: 120
rules:
  - {name: all, route: flash, when: {min_chars: 0}}
"""


class Up:
    """`dsv4serve up tiny --json`: its ready event (stdout, JSON) and its own lines (stderr) as they come."""

    def __init__(self, port: int, log: Path):
        argv = [sys.executable, "-m", "dsv4serve", "up", "tiny", "--json", "--port", str(port)]
        argv += ["--on-unhealthy", "warn", "--stall-s", "20"]
        self.log = log
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.ready: dict | None = None
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        text = ""  # `--json` documents span lines (indented): one is whole once it parses
        for line in self.proc.stdout:
            text += line
            try:
                event = json.loads(text)
            except ValueError:
                continue
            text = ""
            if isinstance(event, dict) and event.get("event") == "ready":
                with self._seen:
                    self.ready = event
                    self._seen.notify_all()

    def _read_err(self) -> None:
        with self.log.open("w") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                with self._seen:
                    self.lines.append(line.rstrip("\n"))

    def wait_ready(self, limit: float) -> dict:
        end = time.monotonic() + limit
        with self._seen:
            while self.ready is None:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise SystemExit(f"up: not ready (rc {self.proc.poll()}); log: {self.log}")
                self._seen.wait(0.5)
            return self.ready

    def health(self) -> list[str]:
        """The watch's state changes: 'stalled: ...', 'memory-growth: ...', 'healthy again'."""
        changes = []
        with self._seen:
            for line in self.lines:  # "dsv4serve: [warning: ]health: stalled: ..." (service/console.py)
                text = line.removeprefix("dsv4serve: ").removeprefix("warning: ")
                if text.startswith("health: "):
                    changes.append(text.removeprefix("health: "))
        return changes


def group_rss(pgid: int) -> int:
    """RSS of the process group's members in bytes, read as the watch reads it on a CPU."""
    return health.group_rss(procs.group_members(pgid))


def pause_engine(pgid: int) -> None:
    """SOAK_FAULT_AT_S: SIGSTOP vLLM's engine core for 40 s (a stuck core: /health stays 200), so a run
    shows the soak failing as it should: the watch reports `stalled`, requests wait or fail."""
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().startswith("VLLM::EngineCor"):
                os.kill(int(pid), signal.SIGSTOP)
                time.sleep(40)
                os.kill(int(pid), signal.SIGCONT)
                return
        except OSError:
            continue


def client(base: str, model: str, until: float, out: list, i: int) -> None:
    """Requests one after another until `until`: (start, seconds, outcome) each, outcome ok | error | lost."""
    body = {"model": model, "max_tokens": TOKENS, "min_tokens": TOKENS, "stream": True}
    with httpx.Client(timeout=120, trust_env=False) as http:
        n = 0
        while time.monotonic() < until:
            n += 1
            messages = [{"role": "user", "content": f"stream {i} request {n}: say something"}]
            t0 = time.monotonic()
            done = content = False
            try:
                with http.stream(
                    "POST", base + "/v1/chat/completions", json={**body, "messages": messages}
                ) as resp:
                    if resp.status_code != 200:
                        out.append((t0, time.monotonic() - t0, f"error HTTP {resp.status_code}"))
                        continue
                    for line in resp.iter_lines():
                        done = done or line == "data: [DONE]"
                        content = content or ('"content":"' in line.replace(" ", "") and "data: {" in line)
            except httpx.HTTPError as err:
                out.append((t0, time.monotonic() - t0, f"error {type(err).__name__}"))
                continue
            out.append((t0, time.monotonic() - t0, "ok" if done and content else "lost"))


def windows(results: list, start: float) -> list[tuple[int, float, float]]:
    """(completed requests, requests/s, p50 s) per window of WINDOW_S from `start`."""
    count = max(1, int(SOAK_S // WINDOW_S))
    rows = []
    for w in range(count):
        lo, hi = start + w * WINDOW_S, start + (w + 1) * WINDOW_S
        seconds = [s for t0, s, outcome in results if lo <= t0 + s < hi and outcome == "ok"]
        rows.append((len(seconds), len(seconds) / WINDOW_S, statistics.median(seconds) if seconds else 0.0))
    return rows


def slope_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of memory over time, bytes per minute."""
    if len(samples) < 2:
        return 0.0
    ts = [t for t, _ in samples]
    vs = [v for _, v in samples]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    var = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / var if var else 0.0


def main() -> int:
    # a timeout's SIGTERM unwinds through the finally below: the servers started here stop with it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{Path(__file__).name}: stopped by SIGTERM"))
    tmp = Path(tempfile.mkdtemp(prefix="dsv4serve-soak-"))
    port, route_port = free_port(), free_port()
    up = Up(port, tmp / "up.log")
    router = None
    try:
        pgid = int(up.wait_ready(600)["pid"])  # vLLM's group leader: its pid is the group id
        (tmp / "router.yaml").write_text(ROUTER_PROFILE)
        upstream = f"http://127.0.0.1:{port}"
        router = start(
            ["route", str(tmp / "router.yaml"), "--flash", upstream, "--pro", upstream]
            + ["--port", str(route_port), "--workers", "1"],
            f"http://127.0.0.1:{route_port}/health",
            120,
            tmp,
            "router",
        )
        model = httpx.get(f"{upstream}/v1/models", timeout=10, trust_env=False).json()["data"][0]["id"]
        results: list = []
        memory: list[tuple[float, int]] = []
        start_t = time.monotonic()
        until = start_t + SOAK_S
        threads = [
            threading.Thread(target=client, args=(f"http://127.0.0.1:{route_port}", model, until, results, i))
            for i in range(STREAMS)
        ]
        for t in threads:
            t.start()
        fault = FAULT_AT_S is not None and threading.Timer(FAULT_AT_S, pause_engine, (pgid,))
        if fault:
            fault.start()
        while time.monotonic() < until:
            memory.append((time.monotonic() - start_t, group_rss(pgid)))
            time.sleep(1.0)
        for t in threads:
            t.join(180)
        return report(results, memory, up.health(), start_t)
    finally:
        if router is not None:
            stop(router)
        if up.proc.poll() is None:
            stop(up.proc)


def report(results: list, memory: list[tuple[float, int]], health: list[str], start: float) -> int:
    outcomes = [outcome for _, _, outcome in results]
    ok, lost = outcomes.count("ok"), outcomes.count("lost")
    errors = [o for o in outcomes if o.startswith("error")]
    print(f"soak: {SOAK_S:.0f} s, {STREAMS} streams through the router to one tiny vLLM (CPU build)")
    print(f"requests: {len(results)} sent, {ok} complete, {len(errors)} errors, {lost} lost")
    rows = windows(results, start)
    anchor_rate, anchor_p50 = rows[0][1] or 1.0, rows[0][2] or 1.0
    for w, (n, rate, p50) in enumerate(rows):
        print(
            f"  window {w + 1} ({w * WINDOW_S:.0f}-{(w + 1) * WINDOW_S:.0f} s): {n} requests, "
            f"{rate:.2f} req/s (x{rate / anchor_rate:.2f} of window 1), "
            f"p50 {p50 * 1000:.0f} ms (x{p50 / anchor_p50:.2f})"
        )
    first, last = memory[0][1], memory[-1][1]
    peak = max(v for _, v in memory)
    growth = last - first
    print(
        f"memory (server group RSS, {len(memory)} samples): {first / 2**20:.0f} MiB -> "
        f"{last / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, growth {growth / 2**20:+.0f} MiB "
        f"(margin {MARGIN / 2**20:.0f}), "
        f"slope {slope_per_min(memory) / 2**20:+.1f} MiB/min"
    )
    alarms = [line for line in health if not line.startswith("healthy")]
    print(f"the watch's state changes: {len(health)} ({'; '.join(health) or 'none'})")
    broken = []
    if lost or errors:
        broken.append(f"{lost} lost, {len(errors)} errors ({', '.join(sorted(set(errors)))})")
    if alarms:
        broken.append(f"the watch raised {len(alarms)} alarm(s) under steady load")
    if growth > MARGIN:
        broken.append(f"memory grew {growth / 2**20:.0f} MiB, past the margin")
    if not ok:
        broken.append("no request completed")
    for line in broken:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
