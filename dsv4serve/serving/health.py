"""Health while serving: what the watch reads and how it judges (pure parts and the readings).

`/health` keeps answering 200 through the failures seen most after ready: an engine that spins or
hangs with requests in flight, no token coming (vLLM issues 40969, 41834, 41125). So the watch reads
what a server does, not what it says: the engine's Prometheus counters (requests running, tokens
generated) and a real one-token completion, beside /health. It is engine-neutral: HTTP endpoints any
OpenAI-compatible server has, metric names of the engines dsv4serve knows (others: the probe alone),
and the memory of the server's process group (RSS on the CPU, NVML on GPUs).

Two states besides `ok`:
- `stalled`: requests are running and no token has been produced for `stall_s`; or the probe got no
  token within `stall_s` while nothing else produced one; or /health or the probe kept failing;
- `memory-growth`: the group's memory (per GPU on GPUs) grew past what it held when the watch began
  by more than the margin.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from dsv4serve.serving.local_http import OPENER, json_headers

STATES = ("ok", "stalled", "memory-growth")
POLICIES = ("off", "warn", "restart", "stop")
MIB = 2**20

# The counters and gauges the watch reads, by engine (first found wins): vLLM, llama.cpp's server.
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
GENERATED = ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total")
SPEC_ACCEPTED = ("vllm:spec_decode_num_accepted_tokens_total",)
SPEC_DRAFTED = ("vllm:spec_decode_num_draft_tokens_total",)

# Failures in a row (of /health, or of the probe) that make a server stalled without a timeout.
FAILURES_IN_A_ROW = 3
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


@dataclass(frozen=True)
class WatchConfig:
    """What the watch looks for and what the supervisor does about it (policy)."""

    policy: str = "warn"  # off | warn | restart | stop
    stall_s: float = 60.0  # N: no token for this long with requests running (or a probe waiting)
    interval_s: float = 5.0  # between checks (and probes)
    memory_margin_bytes: int = 2 * 2**30  # growth past the memory at the watch's start
    max_restarts: int = 3  # restart: at most this many in a row, then stop (exit 6)
    backoff_s: float = 5.0  # restart: waits 5, 10, 20 ... s (at most 300) before each start
    device: str = "cpu"  # cpu: RSS of the process group; cuda: NVML
    gpus: tuple[str, ...] = ()  # GPU uuids (or indices) the server uses

    def to_dict(self) -> dict:
        return {**self.__dict__, "gpus": list(self.gpus)}

    @classmethod
    def from_dict(cls, data: dict) -> WatchConfig:
        known = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in known}
        values["gpus"] = tuple(values.get("gpus") or ())
        return cls(**values)


def default_watch(plan) -> WatchConfig:
    """The defaults of a plan's profile: a long stall window for DeepSeek-V4 on GPUs, whose first big
    batches compile kernels for minutes after ready (seen on one H200 at 64 concurrent requests), a
    short one on the CPU; a margin in proportion to the memory the server is planned to hold."""
    if plan.device != "cuda":
        return WatchConfig(stall_s=30.0, memory_margin_bytes=512 * MIB, device="cpu")
    v4 = plan.kv is not None and plan.kv.layout == "deepseek_v4"
    expected = max((row.expected_used for row in plan.memory), default=0)
    margin = max(2 * 2**30, int(0.02 * expected))  # CUDA graphs leak slowly (the launch article)
    gpus = tuple(g.uuid or str(g.index) for g in plan.gpus)
    return WatchConfig(stall_s=300.0 if v4 else 60.0, memory_margin_bytes=margin, device="cuda", gpus=gpus)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """`512MiB`, `2GiB`, `2G`, `1.5GB` (binary units: memory is counted in pages) -> bytes."""
    m = _SIZE.match(text or "") if len(text or "") <= 32 else None
    if not m:
        raise ValueError(f"{text!r} is not a size")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: sum over its label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


def pick(metrics: dict[str, float], names: tuple[str, ...]) -> float | None:
    """The first of names the server exposes."""
    return next((metrics[n] for n in names if n in metrics), None)


def acceptance_rate(metrics: dict[str, float]) -> float | None:
    """Speculative decoding: accepted over drafted tokens, where the engine reports them."""
    drafted = pick(metrics, SPEC_DRAFTED)
    accepted = pick(metrics, SPEC_ACCEPTED)
    if not drafted or accepted is None:
        return None
    return accepted / drafted


class StallDetector:
    """Requests running (or a probe waiting) and no token for stall_s; or failures in a row."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self.tokens: float | None = None
        self.tokens_at = float("-inf")  # when the token counter last moved
        self.busy_since: float | None = None
        self.running = 0.0
        self.failures: dict[str, tuple[int, str]] = {}  # what failed in a row: count, last error

    def metrics(self, now: float, running: float | None, generated: float | None) -> None:
        if generated is not None and generated != self.tokens:
            self.tokens, self.tokens_at = generated, now
        if running is not None:
            self.running = running
            if running <= 0:
                self.busy_since = None
            elif self.busy_since is None:
                self.busy_since = now

    def token(self, now: float) -> None:
        """A token came (the probe's)."""
        self.tokens_at = now

    def result(self, what: str, error: str | None) -> None:
        """One /health check or probe: None when it went well."""
        if error is None:
            self.failures.pop(what, None)
        else:
            self.failures[what] = (self.failures.get(what, (0, ""))[0] + 1, error)

    def verdict(self, now: float, probe_since: float | None) -> str | None:
        """Why the server is stalled, or None."""
        if self.busy_since is not None:
            quiet = now - max(self.tokens_at, self.busy_since)
            if quiet >= self.stall_s:
                n = int(self.running)
                return f"{n} request{'s' if n != 1 else ''} running and no token for {quiet:.0f} s"
        if probe_since is not None:
            quiet = now - max(self.tokens_at, probe_since)
            if quiet >= self.stall_s:
                return f"the one-token probe got no token in {now - probe_since:.0f} s"
        for what, (count, error) in sorted(self.failures.items()):
            if count >= FAILURES_IN_A_ROW:
                return f"{what} failed {count} times in a row ({error})"
        return None


class MemoryTrend:
    """One memory figure over time: growth past the first reading, and its slope over a window."""

    def __init__(self, margin_bytes: int, window_s: float = 600.0):
        self.margin = margin_bytes
        self.window_s = window_s
        self.baseline: int | None = None
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, used: int) -> None:
        if self.baseline is None:
            self.baseline = used
        self.samples.append((now, used))
        while self.samples and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()

    @property
    def used(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    @property
    def growth(self) -> int:
        return self.used - self.baseline if self.baseline is not None else 0

    def slope_per_min(self) -> float:
        """Least-squares bytes per minute over the window (0 with fewer than two readings)."""
        if len(self.samples) < 2:
            return 0.0
        n = len(self.samples)
        mean_t = sum(t for t, _ in self.samples) / n
        mean_v = sum(v for _, v in self.samples) / n
        var = sum((t - mean_t) ** 2 for t, _ in self.samples)
        if var <= 0:
            return 0.0
        cov = sum((t - mean_t) * (v - mean_v) for t, v in self.samples)
        return cov / var * 60.0

    def flagged(self) -> bool:
        return self.baseline is not None and self.growth > self.margin


def memory_verdict(trends: dict[str, MemoryTrend]) -> str | None:
    """Why memory grew too far (the worst device first), or None."""
    bad = [(key, t) for key, t in trends.items() if t.flagged()]
    if not bad:
        return None
    key, t = max(bad, key=lambda item: item[1].growth)
    where = "" if key == "cpu" else f" on GPU {key}"
    return (
        f"memory{where} grew {t.growth / MIB:,.0f} MiB since the watch began, past the "
        f"{t.margin / MIB:,.0f} MiB margin (now {t.used / MIB:,.0f} MiB, "
        f"{t.slope_per_min() / MIB:+,.1f} MiB/min)"
    )


# -- readings ---------------------------------------------------------------------------------------


def get_text(url: str, timeout_s: float, api_key: str | None = None) -> tuple[int | None, str]:
    """(HTTP status, body) of a GET; (None, why) when nothing answered."""
    req = urllib.request.Request(url, headers=json_headers(api_key))
    try:
        with OPENER.open(req, timeout=timeout_s) as resp:
            return resp.status, resp.read(4 * MIB).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (OSError, ValueError) as err:
        return None, _why(err)


def probe_token(base_url: str, model: str, timeout_s: float, api_key: str | None = None) -> str | None:
    """One one-token completion within timeout_s: None when a token came, else what went wrong."""
    body = json.dumps({"model": model, "prompt": "ping", "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(base_url + "/v1/completions", data=body, headers=json_headers(api_key))
    try:
        with OPENER.open(req, timeout=timeout_s) as resp:
            choices = json.loads(resp.read(MIB)).get("choices")
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (OSError, ValueError) as err:
        return _why(err)
    return None if choices else "an answer without choices"


def _why(err: Exception) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return str(getattr(reason, "strerror", None) or reason)[:200]


def group_rss(pids: list[int]) -> int:
    """Resident memory of these processes (bytes), from /proc/PID/statm."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * page
        except (OSError, ValueError, IndexError):  # gone while we looked
            continue
    return total


def gpu_used(pids: list[int], gpus: tuple[str, ...]) -> dict[str, int]:
    """Bytes per GPU (uuid or index) these processes hold, from NVML; a GPU whose processes NVML cannot
    show (a container's own pid namespace) counts its whole used memory."""
    from dsv4serve.hardware import inventory as hardware  # lazy: NVML only where there are GPUs

    ours = set(pids)
    used: dict[str, int] = {}
    for gpu in hardware.read_inventory().gpus:
        key = gpu.uuid or str(gpu.index)
        if gpus and key not in gpus:
            continue
        mine = [p.used for p in gpu.processes if p.pid in ours]
        used[key] = sum(mine) if mine else gpu.memory_used
    return used


def now() -> float:
    return time.monotonic()


def watch_options(
    policy: str | None = None,
    stall_s: float | None = None,
    memory_margin: str | None = None,
    max_restarts: int | None = None,
) -> dict:
    """The user's watch options, checked (UsageError on a bad value) before anything is planned."""
    from dsv4serve.errors import UsageError

    changes: dict = {}
    if policy is not None:
        if policy not in POLICIES:
            raise UsageError(
                f"--on-unhealthy {policy[:40]!r}: not a policy", f"use one of {', '.join(POLICIES)}"
            )
        changes["policy"] = policy
    if stall_s is not None:
        if not (math.isfinite(stall_s) and 1 <= stall_s <= 86400):
            raise UsageError(f"--stall-s {stall_s}: expected seconds from 1 to 86400", "e.g. --stall-s 120")
        changes["stall_s"] = float(stall_s)
    if memory_margin is not None:
        try:
            changes["memory_margin_bytes"] = parse_size(memory_margin)
        except ValueError:
            raise UsageError(
                f"--memory-margin {memory_margin[:40]!r}: not a size", "e.g. --memory-margin 2GiB or 512MiB"
            ) from None
    if max_restarts is not None:
        changes["max_restarts"] = max_restarts
    return changes


def watch_config(plan, changes: dict | None = None) -> WatchConfig:
    """The plan's defaults with the user's checked options (watch_options) over them."""
    import dataclasses

    config = dataclasses.replace(default_watch(plan), **(changes or {}))
    # several checks in one stall window, so that a stall is seen within stall_s + stall_s / 4
    return dataclasses.replace(config, interval_s=min(config.interval_s, max(1.0, config.stall_s / 4)))
