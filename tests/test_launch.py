"""launch.py and `up`/`smoke`: readiness, early exits, deadlines, signals, nothing left behind.

Fast tests run real (small Python) processes through the launcher; tests marked slow start the real
vLLM (CPU build) on the tiny profile through the dsv4serve CLI, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dsv4serve.errors import LaunchError
from dsv4serve.serving import procs
from dsv4serve.serving import ready as launch_ready
from dsv4serve.serving.launch import Server
from dsv4serve.serving.ready import startup_timeout
from dsv4serve.serving.spec import LaunchSpec

PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spec(code: str, *, timeout: float = 30.0, grace: float = 5.0, log: Path | None = None, port=None):
    return LaunchSpec(
        argv=(PY, "-c", code),
        host="127.0.0.1",
        port=port or free_port(),
        served_model_name="tiny",
        startup_timeout_s=timeout,
        log_path=log,
        grace_s=grace,
    )


def assert_all_gone(pgid: int, tmpdir: str | None = None, port: int | None = None) -> None:
    assert procs.wait_group_gone(pgid, 10.0), f"left in group {pgid}: {procs.group_members(pgid)}"
    if tmpdir:  # removed by dsv4serve, or by the watchdog right after the group is gone
        end = time.monotonic() + 3.0
        while os.path.exists(tmpdir) and time.monotonic() < end:
            time.sleep(0.05)
        assert not os.path.exists(tmpdir), f"TMPDIR {tmpdir} not removed"
    if port:
        assert procs.port_in_use("127.0.0.1", port) is None


# A "server" that never answers and starts a child in its group (like vLLM's EngineCore).
SPAWNS_CHILD = (
    "import subprocess, sys, time, signal\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(300)'])\n"
    "print('child started', flush=True)\n"
    "time.sleep(300)\n"
)


# -- fast: real processes, no vLLM --------------------------------------------------------------------


def test_busy_port_is_an_error_before_anything_starts(tmp_path):
    marker = tmp_path / "started"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = Server(spec(f"open({str(marker)!r}, 'w')", port=port))
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use") as err:
            server.start()
    assert err.value.exit_code == 5
    assert f"--port {port + 1}" in err.value.hint
    assert server.proc is None and not marker.exists()
    server.stop()


def test_early_exit_shows_the_last_40_lines_and_exit_5(tmp_path):
    log = tmp_path / "vllm.log"
    code = "import sys\nfor i in range(60): print(f'line {i}')\nsys.exit(3)"
    server = Server(spec(code, log=log))
    server.start()
    with pytest.raises(LaunchError) as err:
        server.wait_ready()
    server.stop()
    message = err.value.message
    assert err.value.exit_code == 5
    assert "exited with code 3 during startup" in message
    assert "line 59" in message and "line 20" in message and "line 19\n" not in message
    assert str(log) in err.value.hint
    assert log.read_text().splitlines() == [f"line {i}" for i in range(60)]
    assert_all_gone(server.pgid, server.tmpdir)


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("vllm: error: unrecognized arguments: --bogus", "after `--`"),
        ("OSError: [Errno 98] Address already in use", "--port"),
        ("safetensors_rust.SafetensorError: Error while deserializing header", "corrupt"),
        ("something else entirely", "dsv4serve plan"),
    ],
)
def test_early_exit_hint_follows_the_log(line, hint):
    server = Server(spec(f"import sys\nprint({line!r})\nsys.exit(1)"))
    server.start()
    with pytest.raises(LaunchError) as err:
        server.wait_ready()
    server.stop()
    assert hint in err.value.hint


def test_deadline_stops_the_whole_group():
    server = Server(spec(SPAWNS_CHILD, timeout=2.0, grace=1.0))
    events = []
    server._notify = events.append
    server.start()
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="did not become ready within 2 s") as err:
        server.wait_ready()
    assert time.monotonic() - t0 < 4.0
    assert "child started" in err.value.message
    assert len(procs.group_members(server.pgid)) == 2
    server.stop()
    assert_all_gone(server.pgid, server.tmpdir)
    kinds = [e.kind for e in events]
    assert "warning" in kinds  # the child ignored SIGTERM: SIGKILL after the grace period
    assert kinds[-1] == "stopped"


# A "server" whose kernel warmup reports progress past the deadline (a new bar every 0.5 s), then stalls.
WARMS_UP = (
    "import sys, time\n"
    "for i in range(8):\n"
    "    sys.stdout.write(f'Warmup k{i}: 10%|#         | 1/10 [00:01<00:09, 1.00it/s]\\n')\n"
    "    sys.stdout.flush()\n"
    "    time.sleep(0.5)\n"
    "time.sleep(300)\n"
)


def test_the_deadline_waits_while_vllm_reports_progress(monkeypatch):
    monkeypatch.setattr(launch_ready, "PROGRESS_GRACE_S", 1.5)
    server = Server(spec(WARMS_UP, timeout=1.0, grace=1.0))
    server.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(LaunchError, match="did not become ready within 1 s"):
            server.wait_ready()
        waited = time.monotonic() - t0
    finally:
        server.stop()
    assert_all_gone(server.pgid, server.tmpdir)
    # ~3.5 s of progress, then 1.5 s of silence: well past the 1 s deadline, and not forever
    assert 4.5 <= waited < 20


def test_under_systemd_the_wait_past_the_deadline_is_announced(monkeypatch, tmp_path):
    """While it waits on progress, up sends EXTEND_TIMEOUT_USEC to $NOTIFY_SOCKET (a real datagram
    socket, as systemd listens), early and often enough that systemd's start timer, moved as systemd
    moves it (never earlier; only by a message that arrives before it fires), outlasts up's wait."""
    monkeypatch.setattr(launch_ready, "PROGRESS_GRACE_S", 1.5)
    monkeypatch.setattr(launch_ready, "EXTEND_MARGIN_S", 3.0)
    monkeypatch.setattr(launch_ready, "EXTEND_EVERY_S", 0.3)
    path = str(tmp_path / "notify")
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def manager(sock: socket.socket) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                received.append((time.monotonic(), sock.recv(4096).decode()))

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(0.1)
        listener = threading.Thread(target=manager, args=(sock,), daemon=True)
        listener.start()
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        server = Server(spec(WARMS_UP, timeout=1.0, grace=1.0))
        server.start()
        try:
            with pytest.raises(LaunchError, match="did not become ready within 1 s"):
                server.wait_ready()
            gave_up = time.monotonic()
        finally:
            server.stop()
            done.set()
            listener.join(5)
    assert_all_gone(server.pgid, server.tmpdir)
    assert {m for _, m in received} == {f"EXTEND_TIMEOUT_USEC={int((1.5 + 3.0) * 1e6)}"}, received
    assert len(received) >= 3  # ~3.5 s of progress, at most one message per 0.3 s
    fires = server._t0 + 1.0 + 0.5  # a unit's TimeoutStartSec: the deadline + a margin, scaled down
    assert gave_up > fires  # up waited past it on progress: without the messages systemd would cut in
    for at, message in received:
        if at < fires:
            fires = max(fires, at + int(message.partition("=")[2]) / 1e6)
    assert gave_up < fires


def test_watchdog_stops_the_group_when_its_parent_is_sigkilled(tmp_path):
    # A parent that launches the group and then dies by SIGKILL: no chance to clean up itself.
    parent = (
        "import sys, time\n"
        "from dsv4serve.serving.launch import Server\n"
        "from dsv4serve.serving.spec import LaunchSpec\n"
        f"s = Server(LaunchSpec(argv=({PY!r}, '-c', {SPAWNS_CHILD!r}), host='127.0.0.1', port={free_port()},"
        " served_model_name='x', startup_timeout_s=60, grace_s=2))\n"
        "s.start()\n"
        "print(s.pgid, s.tmpdir, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([PY, "-c", parent], stdout=subprocess.PIPE, text=True)
    pgid_text, tmpdir = proc.stdout.readline().split()
    pgid = int(pgid_text)
    assert procs.wait_group_gone(pgid, 0.5) is False
    deadline = time.monotonic() + 10
    while len(procs.group_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    assert_all_gone(pgid, tmpdir)
    assert time.monotonic() - t0 < 6.0


def test_a_signal_while_starting_arrives_once_the_group_is_guarded(monkeypatch):
    # SIGINT right after the fork: it must not cut start() between Popen and the watchdog.
    real_popen, started = subprocess.Popen, []

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        if len(started) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen)
    # Another live thread that does not block the signal (as in a full test run, or vLLM's log
    # drain): the kernel may hand the signal to it, so the main thread's mask alone cannot hold it.
    idle = threading.Event()
    bystander = threading.Thread(target=idle.wait, daemon=True)
    bystander.start()
    server = Server(spec(SPAWNS_CHILD))
    try:
        with procs.stop_on_signals(), pytest.raises(KeyboardInterrupt):
            server.start()
        assert server.proc is started[0] and server._watchdog is started[1]
    finally:
        idle.set()
        server.stop()
        for proc in started:  # without the fix: the group nobody knew about
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert_all_gone(server.pgid, server.tmpdir)


def test_phases_are_read_from_vllm_log_lines():
    lines = [
        "(EngineCore pid=1) INFO [core.py:133] Initializing a V1 LLM engine with config: "
        "compilation_config={'cudagraph_mode': <CUDAGraphMode.NONE: 0>}",
        "(Worker pid=2) INFO [cpu_model_runner.py:68] Starting to load model /x...",
        "Loading safetensors checkpoint shards: 100% Completed | 1/1",
        "(Worker pid=2) INFO [cpu_worker.py:260] Explicitly set (1.0/11.21) GiB for KV cache on node 0.",
        "(APIServer pid=3) INFO [entry.py:140] Starting vLLM server on http://127.0.0.1:8000",
    ]
    code = f"import sys\nfor line in {lines!r}: print(line)\nsys.exit(1)"
    events = []
    server = Server(spec(code), events.append)
    server.start()
    with pytest.raises(LaunchError):
        server.wait_ready()
    server.stop()
    assert [e.text for e in events if e.kind == "phase"] == [
        "loading weights",
        "KV cache allocation",
        "API server",
    ]
    assert server.phase == "API server"
    assert list(server.phase_times) == ["loading weights", "KV cache allocation", "API server"]


def test_startup_deadline_sources():
    assert startup_timeout(300, 10**12, None) == 300.0
    assert startup_timeout(300, 10**12, 12.5) == 12.5
    assert startup_timeout(0, 0, None) == 300.0
    assert startup_timeout(0, 400 * 10**9, None) == 1300.0  # sized from the weights


def test_up_dry_run_prints_the_planners_command_and_starts_nothing(run_cli):
    result = run_cli("up", "tiny", "--dry-run", "--port", "8123", "--", "--seed", "7")
    assert result.exit_code == 0, result.stderr
    assert "--port 8123" in result.stdout and "--seed 7" in result.stdout
    assert "VLLM_CPU_KVCACHE_SPACE=" in result.stdout


def test_up_on_a_busy_port_exits_5_before_vllm_starts(run_cli):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_cli("up", "tiny", "--port", str(port))
    assert result.exit_code == 5
    assert f"error: port {port} on 127.0.0.1 is already in use; vLLM was not started" in result.stderr
    assert "vLLM started" not in result.stderr


# -- slow: the real vLLM (CPU build) on the tiny profile, through the CLI -------------------------------


class Cli:
    """`dsv4serve ...` as a separate process, its stdout/stderr read as they come."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream, sink) -> None:
        for line in stream:
            with self._cond:
                sink.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, stream: str = "err") -> re.Match:
        sink = self.err if stream == "err" else self.out
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in sink:
                    if m := regex.search(line):
                        return m
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "".join(self.err[-40:])
                    raise AssertionError(
                        f"{pattern!r} not seen (rc={self.proc.poll()}); stderr tail:\n{tail}"
                    )
                self._cond.wait(min(left, 0.5))

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def started(self) -> tuple[int, str]:
        m = self.wait_for(r"vLLM started: pid (\d+) \(process group \d+\), TMPDIR (\S+)", 60)
        return int(m.group(1)), m.group(2)


def chat(port: int) -> str:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=60) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_tiny_end_to_end(dsv4serve_cmd):
    port = free_port()
    cli = Cli([*dsv4serve_cmd, "smoke", "tiny", "--json", "--port", str(port)])
    assert cli.finish(280) == 0, "".join(cli.err[-40:])
    result = json.loads("".join(cli.out))
    assert result["reply"].strip()
    assert result["completion_tokens"] >= 4
    assert 0 < result["ttft_s"] < result["request_s"]
    assert 0 < result["ready_s"] < 280
    assert result["stopped_cleanly"] is True
    assert_all_gone(result["pid"], port=port)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_serves_then_stops_cleanly_on_signal(dsv4serve_cmd, sig):
    port = free_port()
    cli = Cli([*dsv4serve_cmd, "up", "tiny", "--json", "--port", str(port)])
    pgid, tmpdir = cli.started()
    cli.wait_for(r'"event": "ready"', 240, stream="out")
    ready = json.loads("".join(cli.out))
    assert ready["endpoint"] == f"http://127.0.0.1:{port}/v1" and ready["model"] == "tiny"
    assert ready["pid"] == pgid
    assert chat(port)  # ready means it answers, not just /health
    assert len(procs.group_members(pgid)) >= 3  # API server, EngineCore, worker
    assert os.path.isdir(tmpdir)
    cli.proc.send_signal(sig)
    assert cli.finish(30) == 0
    assert "vLLM exited with code" in "".join(cli.err)
    assert_all_gone(pgid, tmpdir, port)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_loading_stops_everything(dsv4serve_cmd, sig):
    port = free_port()
    cli = Cli([*dsv4serve_cmd, "up", "tiny", "-v", "--port", str(port)])  # -v: vLLM's lines too
    pgid, tmpdir = cli.started()
    cli.wait_for(r"Initializing a V1 LLM engine", 120)  # EngineCore is up, the model is loading
    cli.proc.send_signal(sig)
    assert cli.finish(30) == 128 + sig
    assert not cli.out  # never became ready
    assert_all_gone(pgid, tmpdir, port)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_dsv4serve_takes_vllm_down(dsv4serve_cmd):
    port = free_port()
    cli = Cli([*dsv4serve_cmd, "up", "tiny", "--json", "--port", str(port)])
    pgid, tmpdir = cli.started()
    cli.wait_for(r'"event": "ready"', 240, stream="out")
    assert len(procs.group_members(pgid)) >= 3
    cli.proc.kill()
    cli.proc.wait()
    t0 = time.monotonic()
    assert_all_gone(pgid, tmpdir, port)
    assert time.monotonic() - t0 < 8.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_vllm_dying_at_startup_exits_5_with_its_log_tail(dsv4serve_cmd):
    port = free_port()
    cli = Cli([*dsv4serve_cmd, "up", "tiny", "--port", str(port), "--", "--no-such-flag"])
    pgid, tmpdir = cli.started()
    assert cli.finish(100) == 5
    err = "".join(cli.err)
    assert "error: vLLM exited with code" in err and "during startup" in err
    assert "  | " in err and "--no-such-flag" in err.split("error: vLLM exited", 1)[1]
    assert "hint: vLLM rejected an argument" in err
    assert_all_gone(pgid, tmpdir, port)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_timeout_expiring_exits_5_and_stops_vllm(dsv4serve_cmd):
    port = free_port()
    t0 = time.monotonic()
    cli = Cli([*dsv4serve_cmd, "up", "tiny", "--port", str(port), "--timeout", "6"])
    pgid, tmpdir = cli.started()
    assert cli.finish(60) == 5
    assert time.monotonic() - t0 < 40
    err = "".join(cli.err)
    assert "error: vLLM did not become ready within 6 s" in err
    assert "hint: raise the deadline with --timeout" in err
    assert_all_gone(pgid, tmpdir, port)
