"""The health watch while serving (serving/health.py, watch.py, supervise.py): its judgement on tables of
readings, then real processes: a server whose request hangs while /health stays 200, a helper in its
group that allocates, the restart and stop policies with a client whose request is cut.

The server here is tests/health_server.py (a small real HTTP process: vLLM's metric names, streamed
completions); test_health_live.py does the same to the real vLLM (CPU build), marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dsv4serve.errors import EXIT_UNHEALTHY, UnhealthyError, UsageError
from dsv4serve.serving import health as h
from dsv4serve.serving import procs
from dsv4serve.serving.spec import LaunchSpec
from dsv4serve.serving.supervise import Supervision
from dsv4serve.serving.watch import HealthWatch, Unhealthy, render_metrics

SERVER = str(Path(__file__).with_name("health_server.py"))
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MIB = 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, path: str, body: dict, timeout: float = 30.0) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with OPENER.open(req, timeout=timeout) as resp:
        return resp.read()


# -- judgement on readings ------------------------------------------------------------------------------

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
vllm:generation_tokens_total{engine="0",model_name="tiny"} 317.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="tiny"} 400.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="tiny"} 300.0
vllm:bogus{a="b"} NaN
not a sample line
"""


def test_metrics_are_summed_over_label_sets_and_the_engines_names_read():
    m = h.parse_metrics(VLLM_METRICS)
    assert h.pick(m, h.RUNNING) == 3.0
    assert h.pick(m, h.GENERATED) == 317.0
    assert h.acceptance_rate(m) == 0.75
    assert "vllm:bogus" not in m
    llama = h.parse_metrics("llamacpp:requests_processing 1\nllamacpp:tokens_predicted_total 42\n")
    assert h.pick(llama, h.RUNNING) == 1.0 and h.pick(llama, h.GENERATED) == 42.0
    assert h.acceptance_rate(llama) is None


@pytest.mark.parametrize(
    ("readings", "probe_since", "at", "stalled"),
    [
        # (time, running, generated) ...
        ([(0, 2, 10), (5, 2, 20), (10, 2, 30)], None, 10, None),  # tokens move: fine
        ([(0, 2, 10), (5, 2, 10), (10, 2, 10)], None, 10, "2 requests running and no token for 10 s"),
        ([(0, 0, 10), (5, 0, 10), (10, 0, 10)], None, 10, None),  # idle: no tokens is fine
        ([(0, 0, 10), (8, 1, 10)], None, 10, None),  # busy for 2 s only
        ([(0, 0, 10)], 0.0, 10, "the one-token probe got no token in 10 s"),
        ([(0, 0, 10), (4, 1, 11)], 0.0, 10, None),  # the probe waits, but tokens came 6 s ago
    ],
)
def test_a_stall_is_running_requests_or_a_waiting_probe_with_no_token(readings, probe_since, at, stalled):
    detector = h.StallDetector(stall_s=10.0)
    for t, running, generated in readings:
        detector.metrics(t, running, generated)
    verdict = detector.verdict(at, probe_since)
    assert verdict == stalled


def test_failures_in_a_row_are_a_stall_and_one_success_clears_them():
    detector = h.StallDetector(stall_s=10.0)
    for _ in range(h.FAILURES_IN_A_ROW - 1):
        detector.result("/health", "HTTP 503")
    assert detector.verdict(0, None) is None
    detector.result("/health", "HTTP 503")
    assert detector.verdict(0, None) == f"/health failed {h.FAILURES_IN_A_ROW} times in a row (HTTP 503)"
    detector.result("/health", None)
    assert detector.verdict(0, None) is None


def test_memory_growth_is_past_the_first_reading_by_the_margin_with_its_slope():
    trend = h.MemoryTrend(margin_bytes=100 * MIB)
    for minute in range(6):
        trend.add(minute * 60.0, 1000 * MIB + minute * 30 * MIB)
    assert trend.growth == 150 * MIB and trend.flagged()
    assert trend.slope_per_min() == pytest.approx(30 * MIB)
    reason = h.memory_verdict({"0": trend, "1": h.MemoryTrend(100 * MIB)})
    assert reason.startswith("memory on GPU 0 grew 150 MiB since the watch began, past the 100 MiB margin")
    assert "+30.0 MiB/min" in reason
    flat = h.MemoryTrend(margin_bytes=100 * MIB)
    for minute in range(6):
        flat.add(minute * 60.0, 1000 * MIB + (minute % 2) * 50 * MIB)
    assert not flat.flagged() and h.memory_verdict({"cpu": flat}) is None


@pytest.mark.parametrize(("text", "size"), [("512MiB", 512 * MIB), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29)])
def test_sizes(text, size):
    assert h.parse_size(text) == size


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"policy": "reboot"}, "--on-unhealthy 'reboot'"),
        ({"stall_s": 0.0}, "--stall-s 0.0"),
        ({"stall_s": float("nan")}, "--stall-s nan"),
        ({"memory_margin": "lots"}, "--memory-margin 'lots'"),
        ({"memory_margin": "9" * 5000}, "--memory-margin"),
    ],
)
def test_bad_watch_options_are_usage_errors_naming_the_option(options, named):
    with pytest.raises(UsageError) as err:
        h.watch_options(**options)
    assert named in err.value.message and err.value.hint


def test_profile_defaults_follow_the_plan(run_cli):
    from dsv4serve.preflight.options import plan_from_options

    _, tiny = plan_from_options("tiny")
    _, flash = plan_from_options("flash", hardware="2xH200")
    cpu = h.watch_config(tiny)
    assert (cpu.device, cpu.stall_s, cpu.memory_margin_bytes, cpu.policy) == ("cpu", 30.0, 512 * MIB, "warn")
    gpu = h.watch_config(flash, h.watch_options("restart", 120.0, "4GiB", 5))
    assert (gpu.device, gpu.policy, gpu.stall_s, gpu.memory_margin_bytes, gpu.max_restarts) == (
        "cuda",
        "restart",
        120.0,
        4 * 2**30,
        5,
    )
    assert len(gpu.gpus) == 2 and gpu.interval_s <= gpu.stall_s / 4
    assert h.watch_config(flash).stall_s == 300.0  # DeepSeek-V4: first batches compile kernels


def test_the_metrics_text_has_every_state_and_the_restarts():
    status = {"health": "stalled", "reason": "x", "memory_bytes": 5, "probe_s": None, "restarts": 2}
    text = render_metrics(status, "flash")
    assert 'dsv4serve_health{name="flash",state="stalled"} 1' in text
    assert 'dsv4serve_health{name="flash",state="ok"} 0' in text
    assert 'dsv4serve_restarts_total{name="flash"} 2' in text
    assert "dsv4serve_probe_s" not in text
    assert h.parse_metrics(text)["dsv4serve_memory_bytes"] == 5


# -- real processes --------------------------------------------------------------------------------------


def spec(port: int, **watch) -> LaunchSpec:
    config = h.WatchConfig(**{"policy": "warn", "stall_s": 3.0, "interval_s": 0.5, "backoff_s": 0.2, **watch})
    return LaunchSpec(
        argv=(sys.executable, SERVER, str(port)),
        host="127.0.0.1",
        port=port,
        served_model_name="tiny",
        startup_timeout_s=30.0,
        grace_s=2.0,
        health=config,
    )


class Events:
    def __init__(self):
        self.items: list = []
        self._cond = threading.Condition()

    def __call__(self, event) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def wait_for(self, kind: str, text: str, timeout: float):
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.items:
                    if event.kind == kind and text in event.text:
                        return event
                if time.monotonic() >= end:
                    raise AssertionError(f"no {kind} event with {text!r}: {[e.text for e in self.items]}")
                self._cond.wait(0.2)


def hang_in_background(port: int) -> dict:
    """A request that hangs; what its client saw once the server went away."""
    seen: dict = {}

    def run() -> None:
        try:
            post(port, "/v1/completions", {"model": "tiny", "prompt": "hang", "max_tokens": 5}, timeout=120)
            seen["answer"] = True
        except (OSError, urllib.error.URLError) as err:
            seen["error"] = type(err).__name__
        seen["done"] = True

    threading.Thread(target=run, daemon=True).start()
    return seen


def test_a_hung_request_is_stalled_while_health_stays_200():
    from dsv4serve.serving.launch import Server

    port = free_port()
    server = Server(spec(port))
    server.start()
    try:
        server.wait_ready()
        events = []
        watch = HealthWatch(
            server.base_url, "tiny", server.pgid, spec(port).health, lambda k, t: events.append((k, t))
        ).start()
        try:
            assert json.loads(post(port, "/v1/completions", {"model": "tiny", "max_tokens": 3}))["choices"]
            time.sleep(2.0)
            assert watch.status()["health"] == "ok" and watch.check()  # tokens came, nothing hangs
            assert watch.status()["probe_s"] is not None
            hang_in_background(port)
            end = time.monotonic() + 15
            while watch.status()["health"] == "ok" and time.monotonic() < end:
                time.sleep(0.2)
            status = watch.status()
            assert status["health"] == "stalled", status
            assert "running and no token for" in status["reason"] or "probe got no token" in status["reason"]
            assert h.get_text(server.base_url + "/health", 2.0)[0] == 200  # /health alone would pass it
            assert watch.check()  # warn: the supervisor is told, nothing is raised
            assert events and events[0][0] == "health" and events[0][1].startswith("stalled: ")
        finally:
            watch.close()
    finally:
        server.stop()


def test_restart_kills_the_stalled_server_cuts_its_client_and_serves_again():
    port = free_port()
    events = Events()
    supervision = Supervision(spec(port, policy="restart", max_restarts=1), events)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["code"] = supervision.run()
        except UnhealthyError as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        events.wait_for("ready", "http://", 30)
        first = supervision.server.pgid
        cut = hang_in_background(port)
        events.wait_for("restart", "stalled: ", 20)
        events.wait_for("restart", "restarted (1 of 1): ready", 30)
        assert supervision.restarts == 1 and supervision.server.pgid != first
        assert procs.wait_group_gone(first, 5.0)
        end = time.monotonic() + 10
        while "done" not in cut and time.monotonic() < end:
            time.sleep(0.1)
        assert cut.get("error") and not cut.get("answer")  # an error, never a silent short answer
        assert json.loads(post(port, "/v1/completions", {"model": "tiny", "max_tokens": 4}))["choices"]
        # The limit: one more stall is one restart too many, and the supervisor stops (exit 6).
        hang_in_background(port)
        thread.join(30)
        err = outcome["error"]
        assert err.exit_code == EXIT_UNHEALTHY == 6
        assert "restarted 1 times in a row already (--max-restarts 1)" in err.message
        assert procs.group_members(supervision.server.pgid) == []
    finally:
        supervision.stop()


def test_stop_policy_exits_6_and_leaves_nothing():
    port = free_port()
    supervision = Supervision(spec(port, policy="stop"), Events())
    started = threading.Event()

    def hang_once_ready() -> None:
        started.wait(30)
        hang_in_background(port)

    threading.Thread(target=hang_once_ready, daemon=True).start()
    supervision._on_ready = lambda server: started.set()
    try:
        with pytest.raises(UnhealthyError) as err:
            supervision.run()
    finally:
        supervision.stop()
    assert err.value.exit_code == 6
    assert "stalled: " in err.value.message and "(--on-unhealthy stop)" in err.value.message
    assert procs.group_members(supervision.server.pgid) == []
    assert procs.port_in_use("127.0.0.1", port) is None


def test_a_helper_that_allocates_in_the_group_is_memory_growth(tmp_path):
    from dsv4serve.serving.launch import Server

    port = free_port()
    config = dataclasses.replace(spec(port).health, memory_margin_bytes=96 * MIB)
    server = Server(spec(port))
    server.start()
    try:
        server.wait_ready()
        metrics = tmp_path / "tiny.prom"
        watch = HealthWatch(
            server.base_url, "tiny", server.pgid, config, lambda k, t: None, metrics_path=metrics
        )
        watch.start()
        try:
            time.sleep(1.5)  # the baseline
            assert watch.status()["health"] == "ok"
            post(port, "/grow?mib=256", {})
            end = time.monotonic() + 20
            while watch.status()["health"] != "memory-growth" and time.monotonic() < end:
                time.sleep(0.2)
            status = watch.status()
            assert status["health"] == "memory-growth", status
            assert status["memory_growth_bytes"] > 96 * MIB
            assert "since the watch began, past the 96 MiB margin" in status["reason"]
            time.sleep(1.0)
            text = metrics.read_text()
            assert 'dsv4serve_health{name="tiny",state="memory-growth"} 1' in text
            with pytest.raises(Unhealthy):
                watch.config = dataclasses.replace(config, policy="stop")
                watch.check()
        finally:
            watch.close()
    finally:
        server.stop()
    assert procs.group_members(server.pgid) == []  # the helper went with the group


def test_ps_shows_a_ready_servers_health_and_restarts(run_cli, tmp_path, monkeypatch):
    from dsv4serve.service import state
    from tests.test_service_state import record

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    why = "3 requests running and no token for 31 s"
    state.write(record("sick", state="ready", health="stalled", health_reason=why, restarts=2))
    state.write(record("fine", state="ready", health="ok"))
    state.metrics_path("sick").write_text("dsv4serve_health 1\n")
    result = run_cli("ps")
    lines = result.stdout.splitlines()
    sick = next(i for i, line in enumerate(lines) if line.startswith("sick "))
    assert lines[sick].split()[2] == "stalled"
    assert lines[sick + 1].strip() == f"{why} (restarts: 2)"
    assert next(line for line in lines if line.startswith("fine ")).split()[2] == "ready"
    rows = {r["name"]: r for r in json.loads(run_cli("ps", "--json").stdout)["servers"]}
    assert (rows["sick"]["state"], rows["sick"]["health"], rows["sick"]["restarts"]) == (
        "ready",
        "stalled",
        2,
    )
    state.remove("sick")  # its metrics file goes with the record
    assert not state.metrics_path("sick").exists()
