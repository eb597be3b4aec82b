"""The health watch of one ready server: a thread that checks it every interval (serving.health judges).

Each check reads /health, the engine's /metrics and the process group's memory, and keeps one real
one-token completion in flight at most (in a thread of its own, so a hung server cannot hold the
checks up). The state (ok, stalled, memory-growth) goes to the supervisor's `emit` on each change, to
a Prometheus text file when given, and, while ok, to systemd's watchdog (WATCHDOG=1: a stalled server
stops the pings, so a unit with WatchdogSec= is restarted even if dsv4serve itself hangs).
`check()` is the supervisor's hook: it raises Unhealthy when the policy is restart or stop.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dsv4serve.serving import health as h
from dsv4serve.serving import procs, sd_notify


class Unhealthy(Exception):  # noqa: N818 - a verdict the supervisor acts on, not a bug
    """The watch's verdict under `restart` or `stop`: the state and why."""

    def __init__(self, state: str, reason: str):
        super().__init__(f"{state}: {reason}")
        self.state = state
        self.reason = reason


class HealthWatch:
    """Watches the server at base_url (process group pgid) until close()."""

    def __init__(
        self,
        base_url: str,
        model: str,
        pgid: int,
        config: h.WatchConfig,
        emit: Callable[[str, str], None],
        *,
        api_key: str | None = None,
        metrics_path: Path | None = None,
        on_status: Callable[[dict], None] | None = None,
        send: Callable[[str], object] = sd_notify.notify,
    ):
        self.base_url, self.model, self.pgid, self.config = base_url, model, pgid, config
        self._emit, self._api_key, self._metrics_path = emit, api_key, metrics_path
        self._on_status, self._send = on_status, send
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stalls = h.StallDetector(config.stall_s)
        self.memory: dict[str, h.MemoryTrend] = {}
        self.state, self.reason = "ok", ""
        self.since = time.time()
        self.metrics: dict[str, float] = {}
        self.probe_s: float | None = None  # the last probe's time to its token
        self._probe_since: float | None = None
        self.checks = 0
        self.restarts = 0  # set by the supervisor: restarts so far (shown with the state)

    # -- the supervisor's side -------------------------------------------------------------------------

    def start(self) -> HealthWatch:
        self._thread = threading.Thread(target=self._run, name="dsv4serve-health", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def check(self) -> bool:
        """The supervisor's hook: raises Unhealthy when the policy acts on the state; True otherwise."""
        with self._lock:
            state, reason = self.state, self.reason
        if state != "ok" and self.config.policy in ("restart", "stop"):
            raise Unhealthy(state, reason)
        return True

    def status(self) -> dict:
        """What ps and the metrics file show."""
        with self._lock:
            mem = self.memory.values()
            return {
                "health": self.state,
                "reason": self.reason,
                "since": round(self.since, 3),
                "running": h.pick(self.metrics, h.RUNNING),
                "waiting": h.pick(self.metrics, h.WAITING),
                "generated_tokens": h.pick(self.metrics, h.GENERATED),
                "probe_s": self.probe_s,
                "memory_bytes": sum(t.used for t in mem),
                "memory_growth_bytes": max((t.growth for t in mem), default=0),
                "memory_slope_bytes_per_min": round(max((t.slope_per_min() for t in mem), default=0.0)),
                "checks": self.checks,
                "restarts": self.restarts,
            }

    # -- the thread's side -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self._check_once()
            except Exception as err:  # noqa: BLE001 - the watch must not die of one bad reading
                self._emit("warning", f"health watch: a check failed: {type(err).__name__}: {err}")

    def _check_once(self) -> None:
        t = h.now()
        timeout = min(self.config.interval_s, 5.0)
        status, why = h.get_text(self.base_url + "/health", timeout, self._api_key)
        code, text = h.get_text(self.base_url + "/metrics", timeout, self._api_key)
        metrics = h.parse_metrics(text) if code == 200 else {}
        memory = self._read_memory()
        with self._lock:
            self.checks += 1
            self.stalls.result("/health", None if status == 200 else (f"HTTP {status}" if status else why))
            if metrics:
                self.metrics = metrics
                self.stalls.metrics(t, h.pick(metrics, h.RUNNING), h.pick(metrics, h.GENERATED))
            for key, used in memory.items():
                trend = self.memory.setdefault(key, h.MemoryTrend(self.config.memory_margin_bytes))
                trend.add(t, used)
            probing = self._probe_since is not None
            if not probing:
                self._probe_since = t
        if not probing:
            threading.Thread(target=self._probe, args=(t,), name="dsv4serve-probe", daemon=True).start()
        self._judge(h.now())

    def _read_memory(self) -> dict[str, int]:
        pids = procs.group_members(self.pgid)
        if self.config.device == "cuda":
            try:
                return h.gpu_used(pids, self.config.gpus)
            except Exception:  # noqa: BLE001 - NVML gone for a moment: no reading this time
                return {}
        return {"cpu": h.group_rss(pids)} if pids else {}

    def _probe(self, started: float) -> None:
        # Bounded: past stall_s the verdict is made without it; the socket gives up a little later.
        error = h.probe_token(self.base_url, self.model, self.config.stall_s + 10.0, self._api_key)
        done = h.now()
        with self._lock:
            self._probe_since = None
            self.stalls.result("the probe", error)
            if error is None:
                self.stalls.token(done)
                self.probe_s = round(done - started, 3)

    def _judge(self, t: float) -> None:
        with self._lock:
            stalled = self.stalls.verdict(t, self._probe_since)
            grown = h.memory_verdict(self.memory)
            state, reason = (
                ("stalled", stalled) if stalled else ("memory-growth", grown) if grown else ("ok", "")
            )
            changed = state != self.state
            if changed:
                self.state, self.reason, self.since = state, reason, time.time()
        if changed:
            self._emit("health", f"{state}: {reason}" if reason else "healthy again")
            if self._on_status is not None:
                self._on_status(self.status())
        if state == "ok":
            self._send("WATCHDOG=1")
        self._write_metrics()

    def _write_metrics(self) -> None:
        if self._metrics_path is None:
            return
        with contextlib.suppress(OSError):
            write_text_atomic(self._metrics_path, render_metrics(self.status(), self._metrics_path.stem))


def render_metrics(status: dict, name: str = "") -> str:
    """The watch's state as Prometheus text (node_exporter's textfile collector reads such files)."""
    label = f'name="{name}",' if name else ""
    only = label.rstrip(",")
    lines = [
        "# HELP dsv4serve_health The health watch's state (1 for the current one).",
        "# TYPE dsv4serve_health gauge",
    ]
    lines += [f'dsv4serve_health{{{label}state="{s}"}} {int(status["health"] == s)}' for s in h.STATES]
    figures = {
        "memory_bytes": "Memory the server's processes hold (RSS, or per-GPU NVML summed).",
        "memory_growth_bytes": "Growth since the watch began (the worst device).",
        "memory_slope_bytes_per_min": "Memory slope over the last 10 minutes.",
        "probe_s": "Seconds the last one-token probe took.",
    }
    for key, text in figures.items():
        if status.get(key) is not None:
            lines += [f"# HELP dsv4serve_{key} {text}", f"# TYPE dsv4serve_{key} gauge"]
            lines.append(f"dsv4serve_{key}{{{only}}} {status[key]}")
    lines += [
        "# HELP dsv4serve_restarts_total Restarts by the watch's policy.",
        "# TYPE dsv4serve_restarts_total counter",
    ]
    lines.append(f"dsv4serve_restarts_total{{{only}}} {status.get('restarts', 0)}")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one (0600: the same directory as the state records)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
