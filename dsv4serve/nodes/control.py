"""dsv4serve's own line between the head node and its workers: who joined, ready, stop, lost.

vLLM does not end a headless node when the head goes (recipes/vllm-cpu.md, "Two nodes": after SIGINT
of node 0, node 1 and its worker were alive 60 s later), and a head whose worker died waits forever
in a collective. So the head's dsv4serve listens on the master address, port master_port + 1, and
each worker's dsv4serve holds one TCP connection to it. Lines, both ways:

    worker -> head   HELLO <rank> <nnodes> <fingerprint> <summary>   then BEAT every second
    head -> worker   OK | NO <reason>;  BEAT every second;  READY once the API answers;  STOP <reason>

A connection that closes, or is silent for LOST_AFTER_S, is a lost peer: the head stops (its model
cannot run without the worker's GPUs), the worker stops its vLLM. STOP is the head's orderly end
(Ctrl-C on the head ends the deployment). The fingerprint makes nodes with different plans refuse
each other before vLLM hangs on them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from dsv4serve.errors import LaunchError

CONTROL_PORT_OFFSET = 1  # master_port + 1
BEAT_S = 1.0
LOST_AFTER_S = 10.0
_LINE_MAX = 4096

Say = Callable[[str, str], None]  # (kind, text): "started" | "warning", for the terminal


class HeadStopped(Exception):  # noqa: N818 - not an error: the head ended the deployment
    """Raised in a worker's watch when the head sent STOP after the deployment was ready."""


class _Peer:
    """One end of a line-based TCP connection, with a reader thread and a writer lock."""

    def __init__(self, sock: socket.socket, on_line: Callable[[str], None], on_close: Callable[[str], None]):
        self.sock = sock
        self.seen = time.monotonic()
        self._lock = threading.Lock()
        self._on_line, self._on_close = on_line, on_close
        self._thread = threading.Thread(target=self._read, name="dsv4serve-node-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, line: str) -> bool:
        with self._lock:
            try:
                self.sock.sendall((line + "\n").encode())
                return True
            except OSError:
                return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _read(self) -> None:
        buffer = b""
        why = "connection closed"
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.seen = time.monotonic()
                    self._on_line(line.decode("utf-8", "replace").strip())
                if len(buffer) > _LINE_MAX:
                    why = "garbage on the line"
                    break
        except OSError as err:
            why = f"connection error: {err.strerror or err}"
        self._on_close(why)


def _is_count(text: str) -> bool:
    """A rank or node count as a worker sends it: a few ASCII digits (str.isdigit() takes '²', which
    int() refuses, and a 4,000-digit number is no count)."""
    return text.isascii() and text.isdigit() and len(text) <= 5


class HeadLink:
    """The head's side: accepts workers, checks them, beats, and says READY and STOP."""

    def __init__(self, host: str, port: int, nnodes: int, fingerprint: str, summary: str, say: Say):
        self.host, self.port, self.nnodes = host, port, nnodes
        self.fingerprint, self.summary, self._say = fingerprint, summary, say
        self._server: socket.socket | None = None
        self._workers: dict[int, _Peer] = {}
        self._lost: list[str] = []
        self._lock = threading.Lock()
        self._ready = False
        self._stopped = threading.Event()

    def start(self) -> None:
        """Listen on host:port (this node's own address: a head command run on the wrong machine fails
        here, before vLLM starts)."""
        try:
            server = socket.create_server((self.host, self.port), reuse_port=False)
        except OSError as err:
            raise LaunchError(
                f"cannot listen on {self.host}:{self.port} for the worker nodes: {err.strerror or err}",
                "--master-addr must be this head node's own address, and --master-port + 1 free",
            ) from err
        server.settimeout(0.5)
        self._server = server
        threading.Thread(target=self._accept, name="dsv4serve-head-accept", daemon=True).start()
        threading.Thread(target=self._beat, name="dsv4serve-head-beat", daemon=True).start()

    def check(self) -> bool:
        """The launcher's watch: raise when a worker that had joined is gone."""
        with self._lock:
            lost = list(self._lost)
        if lost:
            raise LaunchError(
                f"{lost[0]}: the model cannot run without its GPUs, so the head stops too",
                "start that worker again (the same `dsv4serve up` with its --node-rank), then the head",
            )
        return True

    def ready(self) -> None:
        self._ready = True
        self._broadcast("READY")

    def stop(self, reason: str) -> None:
        """Tell every worker to stop. Idempotent. The lines end with a FIN, not a close: a close with
        the workers' beats unread would send a reset that can overtake STOP."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._broadcast(f"STOP {reason}")
        with self._lock:
            workers = list(self._workers.values())
        for peer in workers:
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_WR)
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()

    def close(self) -> None:
        """After stop(), once this node's vLLM is gone: release the sockets."""
        with self._lock:
            workers = list(self._workers.values())
        for peer in workers:
            peer.close()

    def _broadcast(self, line: str) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for peer in workers:
            peer.send(line)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, addr = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._greet, args=(sock, addr[0]), daemon=True).start()

    def _greet(self, sock: socket.socket, addr: str) -> None:
        sock.settimeout(5.0)
        data = b""
        try:
            while b"\n" not in data and len(data) < _LINE_MAX:
                chunk = sock.recv(_LINE_MAX)
                if not chunk:
                    break
                data += chunk
        except OSError:
            data = b""
        sock.settimeout(None)
        hello = data.decode("utf-8", "replace").split("\n", 1)[0].split(" ", 4)
        reason = self._refusal(hello)
        if reason:
            with contextlib.suppress(OSError):
                sock.sendall(f"NO {reason}\n".encode())
            sock.close()
            self._say("warning", f"refused a node from {addr}: {reason}")
            return
        rank = int(hello[1])
        peer = _Peer(sock, lambda line: None, lambda why, r=rank: self._left(r, why))
        with self._lock:
            self._workers[rank] = peer
            joined = len(self._workers) + 1
        peer.send("OK")
        if self._ready:
            peer.send("READY")
        peer.start()
        self._say("started", f"worker node {rank} joined from {addr} ({joined} of {self.nnodes} nodes)")

    def _refusal(self, hello: list[str]) -> str:
        if len(hello) < 4 or hello[0] != "HELLO" or not (_is_count(hello[1]) and _is_count(hello[2])):
            return "not a dsv4serve worker node"
        rank, nnodes = int(hello[1]), int(hello[2])
        summary = hello[4] if len(hello) > 4 else "?"
        if nnodes != self.nnodes or hello[3] != self.fingerprint:
            return (
                f"the head plans {self.summary}; that node plans {summary}: run the same options everywhere"
            )
        if not 1 <= rank < self.nnodes:
            return f"node rank {rank} is not a worker of {self.nnodes} nodes (1 to {self.nnodes - 1})"
        with self._lock:
            if rank in self._workers:
                return f"node rank {rank} has already joined"
        return ""

    def _left(self, rank: int, why: str) -> None:
        if self._stopped.is_set():
            return
        with self._lock:
            self._workers.pop(rank, None)
            self._lost.append(f"worker node {rank} left the deployment ({why})")

    def _beat(self) -> None:
        while not self._stopped.wait(BEAT_S):
            self._broadcast("BEAT")
            now = time.monotonic()
            with self._lock:
                silent = [(r, p) for r, p in self._workers.items() if now - p.seen > LOST_AFTER_S]
            for rank, peer in silent:
                self._left(rank, f"silent for {LOST_AFTER_S:.0f} s")
                peer.close()


class WorkerLink:
    """A worker's side: joins the head (retrying until it listens), beats, follows READY and STOP."""

    def __init__(
        self, host: str, port: int, rank: int, nnodes: int, fingerprint: str, summary: str, say: Say
    ):
        self.host, self.port, self.rank, self.nnodes = host, port, rank, nnodes
        self._hello = f"HELLO {rank} {nnodes} {fingerprint} {summary}"
        self._say = say
        self._peer: _Peer | None = None
        self._ready = False
        self._refused = ""
        self._stop_reason: str | None = None
        self._lost = ""
        self._closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="dsv4serve-worker-link", daemon=True).start()

    def check(self) -> bool:
        """The launcher's watch: True once the head's API answers; raises when the head is gone."""
        where = f"the head node at {self.host}:{self.port}"
        if self._refused:
            raise LaunchError(
                f"{where} refused this node: {self._refused}", "run the same options on every node"
            )
        if self._stop_reason is not None:
            if self._ready:
                raise HeadStopped(self._stop_reason)
            raise LaunchError(
                f"{where} stopped before the deployment was ready ({self._stop_reason})",
                "read the head's output; start the head again, then this worker",
            )
        peer = self._peer
        if peer is not None and not self._lost and time.monotonic() - peer.seen > LOST_AFTER_S:
            self._lost = f"silent for {LOST_AFTER_S:.0f} s"
        if self._lost:
            raise LaunchError(
                f"lost {where} ({self._lost}): stopping this worker node",
                "the head's dsv4serve is gone: start the head again, then this worker",
            )
        return self._ready

    def close(self) -> None:
        self._closed.set()
        if self._peer is not None:
            self._peer.close()

    def _run(self) -> None:
        announced = False
        while not self._closed.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=5.0)
            except OSError:
                if not announced:
                    self._say("started", f"waiting for the head node at {self.host}:{self.port}")
                    announced = True
                self._closed.wait(1.0)
                continue
            sock.settimeout(None)
            self._peer = _Peer(sock, self._line, self._gone)
            self._peer.send(self._hello)
            self._peer.start()
            while not self._closed.wait(BEAT_S):
                if not self._peer.send("BEAT"):
                    break
            return

    def _line(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "OK":
            self._say("started", f"joined the head node at {self.host}:{self.port} as node {self.rank}")
        elif word == "NO":
            self._refused = rest or "refused"
        elif word == "READY":
            self._ready = True
        elif word == "STOP":
            self._stop_reason = rest or "stopped"

    def _gone(self, why: str) -> None:
        if self._stop_reason is None and not self._refused and not self._closed.is_set():
            self._lost = why
