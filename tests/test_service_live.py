"""`up -d`, `ps`, `logs`, `stop` and the API key with the real vLLM (CPU build) on the tiny profile: each
test leaves no process, port, TMPDIR or state record behind (slow, bounded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dsv4serve.service import state
from dsv4serve.serving import procs
from tests.test_launch import free_port

KEY = "sk-dsv4serve-live-5f1e2d3c4b5a69788796a5b4"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("DSV4SERVE_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


def cli(
    cmd: list[str], *args: str, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def status(port: int, path: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with _OPENER.open(
            urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers), timeout=30
        ) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def cmdlines() -> str:
    """Every process's argv on this machine, as /proc shows it to anyone (what `ps` would print)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(out)


def assert_nothing_left(rec: state.Record) -> None:
    assert procs.wait_group_gone(rec.pgid, 20.0), f"left in group {rec.pgid}: {procs.group_members(rec.pgid)}"
    assert not state.alive(rec.supervisor_pid, rec.supervisor_start)
    assert procs.port_in_use("127.0.0.1", rec.port) is None
    assert state.read(rec.name) is None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_detached_server_with_a_key_ps_logs_stop(dsv4serve_cmd, tmp_path):
    port = free_port()
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    t0 = time.monotonic()
    up = cli(
        dsv4serve_cmd,
        "up",
        "tiny",
        "-d",
        "--name",
        "svc",
        "--port",
        str(port),
        "--api-key-file",
        str(key_file),
        timeout=400,
    )
    up_s = time.monotonic() - t0
    assert up.returncode == 0, up.stderr
    assert "svc ready in" in up.stdout and f"127.0.0.1:{port}/v1" in up.stdout
    rec = state.read("svc")
    try:
        assert rec is not None and rec.state == "ready" and rec.supervisor_alive() and rec.vllm_alive()
        # `up -d` has returned; the server runs on under its supervisor, in a session of its own.
        assert os.getsid(rec.supervisor_pid) == rec.supervisor_pid
        assert status(port, "/v1/models") == 401
        assert status(port, "/v1/models", "wrong") == 401
        assert status(port, "/v1/models", KEY) == 200
        rows = json.loads(cli(dsv4serve_cmd, "ps", "--json").stdout)["servers"]
        assert [(r["name"], r["state"], r["endpoint"]) for r in rows] == [
            ("svc", "ready", f"http://127.0.0.1:{port}/v1")
        ]
        logs = cli(dsv4serve_cmd, "logs", "svc", "--tail", "5")
        assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 5
        # The key: in no argv, no log, no output.
        log_text = Path(rec.log).read_text()
        assert "Application startup complete" in log_text and "401 Unauthorized" in log_text
        assert KEY not in cmdlines()
        assert KEY not in log_text + up.stdout + up.stderr + logs.stdout + json.dumps(rows)
        assert "Application startup complete" not in up.stderr  # a calm console: vLLM's lines in the log
        assert os.stat(rec.log).st_mode & 0o777 == 0o600
    finally:
        t1 = time.monotonic()
        stop = cli(dsv4serve_cmd, "stop", "svc", timeout=120)
        stop_s = time.monotonic() - t1
    assert stop.returncode == 0, stop.stderr
    assert_nothing_left(rec)
    print(f"\nup -d ready {up_s:.1f} s, stop {stop_s:.2f} s")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_smoke_passes_with_the_key_from_the_environment(dsv4serve_cmd):
    smoke = cli(
        dsv4serve_cmd,
        "smoke",
        "tiny",
        "--port",
        str(free_port()),
        "--json",
        timeout=380,
        env={"DSV4SERVE_API_KEY": KEY},
    )
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    result = json.loads(smoke.stdout)
    assert result["stopped_cleanly"] and result["reply"].strip()
    assert KEY not in smoke.stdout + smoke.stderr + Path(result["log"]).read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_of_the_supervisor_then_a_stale_record_and_stop(dsv4serve_cmd):
    port = free_port()
    up = cli(dsv4serve_cmd, "up", "tiny", "-d", "--port", str(port), "--json", timeout=400)
    assert up.returncode == 0, up.stderr
    ready = json.loads(up.stdout)
    assert ready["name"] == "tiny" and ready["event"] == "ready"
    rec = state.read("tiny")
    try:
        os.kill(rec.supervisor_pid, signal.SIGKILL)
        # Today's guarantee: the watchdog outside vLLM's group stops it when its supervisor dies.
        assert procs.wait_group_gone(rec.pgid, 30.0), procs.group_members(rec.pgid)
        rows = json.loads(cli(dsv4serve_cmd, "ps", "--json").stdout)["servers"]
        assert [(r["name"], r["state"], r["uptime_s"]) for r in rows] == [("tiny", "failed", None)]
        stop = cli(dsv4serve_cmd, "stop", "tiny", timeout=120)  # a stale record: its supervisor is gone
        assert stop.returncode == 0, stop.stderr
        assert_nothing_left(rec)
        # A start that fails: its error, the log's tail and exit code; no record left for it.
        bad = cli(dsv4serve_cmd, "up", "tiny", "-d", "--port", str(port), "--", "--no-such-flag", timeout=300)
        assert bad.returncode == 5, bad.stderr
        assert "no-such-flag" in bad.stderr and "  | " in bad.stderr
        assert state.read("tiny") is None
    finally:
        cli(dsv4serve_cmd, "stop", "--all", timeout=120)
    assert state.read_all() == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_of_up_detach_before_ready_stops_what_was_starting(dsv4serve_cmd):
    port = free_port()
    up = subprocess.Popen(
        [*dsv4serve_cmd, "up", "tiny", "-d", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    rec = None
    end = time.monotonic() + 120
    while time.monotonic() < end and up.poll() is None:  # until vLLM's group is recorded
        rec = state.read("tiny")
        if rec is not None and rec.pgid:
            break
        time.sleep(0.1)
    assert rec is not None and rec.pgid and rec.state != "ready", (rec, up.poll())
    up.send_signal(signal.SIGINT)
    out, err = up.communicate(timeout=120)
    assert up.returncode == 130, err
    assert out == b""
    assert_nothing_left(rec)
