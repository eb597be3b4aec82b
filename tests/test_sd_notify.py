"""sd_notify: READY=1 reaches a real datagram socket the way systemd listens; `up` sends it when ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from dsv4serve.serving import sd_notify


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_ready_reaches_a_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with _listener(path) as sock:
        assert sd_notify.notify("READY=1\nSTATUS=ready: http://127.0.0.1:8000/v1", {"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready: http://127.0.0.1:8000/v1"


def test_ready_reaches_an_abstract_socket():
    name = f"dsv4serve-test-{os.getpid()}-{time.monotonic_ns()}"
    with _listener("\0" + name) as sock:
        assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_ready_reads_the_environment(tmp_path, monkeypatch):
    path = str(tmp_path / "n")
    with _listener(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify.ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_no_usable_socket_sends_nothing(value):
    assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": value}) is False


def test_a_vanished_manager_is_not_an_error(tmp_path):
    path = str(tmp_path / "gone")
    _listener(path).close()  # the file is left, nobody listens
    assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": path}) is False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_sends_ready_once_it_serves(dsv4serve_cmd, tmp_path):
    """The real vLLM (CPU build) on tiny under a stand-in service manager: READY=1 after ready."""
    path = str(tmp_path / "notify")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _listener(path) as sock, open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        sock.settimeout(280)
        env = {**os.environ, "NOTIFY_SOCKET": path}
        proc = subprocess.Popen(
            [*dsv4serve_cmd, "up", "tiny", "--port", str(port)], stdout=out, stderr=err, env=env
        )
        try:
            # While vLLM reports progress, up extends the start-up deadline; then READY=1, once.
            extensions = []
            message = sock.recv(4096).decode()
            while message.startswith("EXTEND_TIMEOUT_USEC="):
                extensions.append(int(message.split("=", 1)[1]))
                message = sock.recv(4096).decode()
            assert message.startswith("READY=1") and f":{port}/v1" in message
            from dsv4serve.serving.ready import extension_s

            assert set(extensions) <= {int(extension_s() * 1e6)}, extensions  # the grace and a margin
            # sent once the server answers, not before
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
                assert resp.status == 200
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, (tmp_path / "err").read_text()[-3000:]
