"""What the exports take from the health watch, checked against real processes: the Kubernetes
liveness command generates a token (and fails on a frozen server while /health stays 200), systemd's
watchdog gets WATCHDOG=1 while the server is healthy and no more once it stalls; `probe`'s exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import yaml

from dsv4serve.serving import health as h
from dsv4serve.serving.launch import Server
from dsv4serve.serving.watch import HealthWatch
from tests.test_health import free_port, hang_in_background, post, spec


@pytest.fixture
def fake_server():
    port = free_port()
    server = Server(spec(port))
    server.start()
    server.wait_ready()
    yield port, server
    server.stop()


def liveness_command(run_cli, port: int) -> list[str]:
    result = run_cli("export", "kubernetes", "tiny", "--port", str(port))
    assert result.exit_code == 0, result.stderr
    deployment = next(yaml.safe_load_all(result.stdout))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--on-unhealthy", "stop"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30  # tiny's stall window
    command = live["exec"]["command"]
    assert command[:2] == ["dsv4serve", "probe"]
    return [sys.executable, "-m", "dsv4serve", *command[1:]]


def test_the_kubernetes_liveness_command_needs_a_token_not_health(run_cli, fake_server):
    port, server = fake_server
    command = liveness_command(run_cli, port)
    ok = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: one token in ") and "(model tiny)" in ok.stdout
    hang_in_background(port)  # the engine freezes; /health stays 200
    time.sleep(0.5)
    assert h.get_text(server.base_url + "/health", 2.0)[0] == 200
    quick = [*command[:-1], "2"]  # --timeout 2: the same check, sooner
    failed = subprocess.run(quick, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 6, failed.stderr
    assert "error: no token from http://127.0.0.1:" in failed.stderr and "timed out" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_probe_names_what_is_wrong(run_cli, fake_server):
    port, _ = fake_server
    result = run_cli("probe", f"http://127.0.0.1:{port}/v1", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["model"] == "tiny"
    assert run_cli("probe", "nosuchserver").exit_code == 2
    closed = free_port()
    result = run_cli("probe", "--port", str(closed))
    assert result.exit_code == 5 and "no OpenAI-compatible server answers" in result.stderr
    result = run_cli("probe", "--port", str(closed), "--model", "tiny", "--timeout", "2")
    assert result.exit_code == 6 and "error: no token from" in result.stderr


def test_the_systemd_unit_has_a_watchdog_the_watch_feeds_while_healthy(run_cli, fake_server, tmp_path):
    result = run_cli("export", "systemd", "tiny")
    assert result.exit_code == 0, result.stderr
    assert "WatchdogSec=90\n" in result.stdout  # tiny: a 30 s stall window + 60 s
    assert " --on-unhealthy stop" in result.stdout
    port, server = fake_server
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5.0)
        from dsv4serve.serving import sd_notify

        def send(message: str) -> bool:
            return sd_notify.notify(message, {"NOTIFY_SOCKET": path})

        config = h.WatchConfig(stall_s=3.0, interval_s=0.5)
        watch = HealthWatch(
            server.base_url, "tiny", server.pgid, config, lambda k, t: None, send=send
        ).start()
        try:
            assert sock.recv(64) == b"WATCHDOG=1"
            post(port, "/v1/completions", {"model": "tiny", "max_tokens": 2})
            hang_in_background(port)
            end = time.monotonic() + 15
            while watch.status()["health"] == "ok" and time.monotonic() < end:
                time.sleep(0.2)
            assert watch.status()["health"] == "stalled"
            sock.settimeout(0.2)
            while True:  # the pings sent before the verdict
                try:
                    sock.recv(64)
                except TimeoutError:
                    break
            sock.settimeout(2.0)
            with pytest.raises(TimeoutError):
                sock.recv(64)  # stalled: no more pings, so systemd's watchdog fires
        finally:
            watch.close()
