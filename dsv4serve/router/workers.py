"""Several router processes on one listening socket, with one /metrics and one conversation state.

One event loop does all of a router's CPU work: parsing every request and relaying every chunk of
every stream. N worker processes spread it over cores, each listening on a socket of its own bound to
the same address (SO_REUSEPORT): the kernel spreads connections over them as they arrive. One shared
listening socket would not: asyncio accepts up to `backlog` waiting connections per wake-up, so the
first worker awake takes a whole burst. Counters and histograms live in prometheus_client's
multiprocess files, so any worker's /metrics sums all of them; conversations live in one SQLite file
(router/sessions.py), so a conversation keeps its model whichever worker takes its next turn.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from dsv4serve.serving import procs

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_GRACE_S = 8.0  # uvicorn's graceful shutdown (5 s) plus a margin


def default_workers() -> int:
    """Workers when --workers is not given: one per core but one (left to the upstreams and clients),
    at most 4 (on the 16-core H200 machine, 8 were no better than 4 at 100 concurrent streams)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores - 1))


@contextlib.contextmanager
def shared_metrics(workers: int) -> Iterator[str | None]:
    """A private directory for the workers' metric files (multiprocess mode), removed at the end.

    Set before any metric exists: prometheus_client picks its value class from the environment when
    metrics are made. The router starts no upstream processes after this, so none inherits it."""
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="dsv4serve-route-metrics-")  # 0700
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        import prometheus_client.values as values

        values.ValueClass = values.get_value_class()  # in case prometheus_client was imported already
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        import prometheus_client.values as values

        values.ValueClass = values.get_value_class()
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def shared_sessions(workers: int) -> Iterator[str | None]:
    """The conversations' database file all workers share (router/sessions.py), in a private directory
    removed at the end; None for one worker (its memory)."""
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="dsv4serve-route-sessions-")  # 0700
    try:
        yield os.path.join(path, "sessions.db")
    finally:
        shutil.rmtree(path, ignore_errors=True)


def spawn_workers(count: int, sock: socket.socket, setup) -> list[subprocess.Popen]:
    """Start `count` worker processes serving `setup` (server.Setup) on sock's address.

    Fresh interpreters, not forks: the router may already run threads (the vLLM servers' supervision
    when `route` started them), and a forked child of a threaded process can deadlock on a lock some
    other thread held. The setup (with the upstreams' keys) goes through a pipe, never the argv. Each
    worker dies with the router (PR_SET_PDEATHSIG), so a SIGKILLed router leaves none behind."""
    payload = pickle.dumps((setup, sock.family, sock.getsockname()))
    workers = []
    for _ in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsv4serve.router.worker_main"],
            stdin=subprocess.PIPE,
            preexec_fn=procs.pdeathsig_preexec(signal.SIGTERM),  # noqa: PLW1509 - only prctl, no locks
        )
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        workers.append(proc)
    return workers


def reap(workers: list[subprocess.Popen]) -> list[tuple[int, int]]:
    """The workers that have exited since the last call: (pid, exit code); removes them from the list."""
    gone = [(w.pid, w.returncode) for w in workers if w.poll() is not None]
    workers[:] = [w for w in workers if w.returncode is None]
    return gone


def stop_workers(workers: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (uvicorn finishes open answers), then SIGKILL what is left after grace_s."""
    for w in workers:
        if w.poll() is None:
            w.terminate()
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
    workers.clear()
