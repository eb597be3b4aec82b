"""Several router processes on one listening socket, with one /metrics for all of them.

One event loop serializes every request's parsing and every relayed chunk: a burst of 100 arrivals at
~0.4 ms of work each queues the last one ~40 ms. N forked workers each listen on a socket of their own
bound to the same address (SO_REUSEPORT): the kernel spreads connections over them as they arrive. One
shared listening socket would not: asyncio accepts up to `backlog` waiting connections per wake-up, so
the first worker awake takes a whole burst. Counters and histograms live in prometheus_client's
multiprocess files, so any worker's /metrics sums all of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from dsv4serve import procs

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_GRACE_S = 8.0  # uvicorn's graceful shutdown (5 s) plus a margin


def default_workers() -> int:
    """Workers when --workers is not given: one per core, at most 4 (a core is left to the upstreams
    and the clients on small machines; more than 4 did not help 100 concurrent streams)."""
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


def fork_workers(count: int, run: Callable[[int], None]) -> list[int]:
    """Fork `count` workers that each call run(index) (index 1..count) and exit; returns their pids.

    Forked before any event loop or thread exists in this process, so each child starts clean. A child
    dies with the parent (PR_SET_PDEATHSIG), so a SIGKILLed router leaves no worker behind."""
    die_with_parent = procs.pdeathsig_preexec(signal.SIGTERM)  # made here: it records this pid as parent
    pids = []
    for index in range(1, count + 1):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                die_with_parent()
                run(index)
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    return pids


def own_socket(shared: socket.socket) -> socket.socket:
    """In a worker: a listening socket of its own on the parent's address (the kernel balances
    connections across the group); the inherited one is closed here so only the parent accepts on it.
    Linux admits only sockets of the same user to the group, so no other user can take connections."""
    address = shared.getsockname()
    sock = socket.socket(shared.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)  # as the parent's: a burst of 100+ connections waits, never refused
    shared.close()
    return sock


def reap(pids: list[int]) -> list[tuple[int, int]]:
    """The workers that have exited since the last call: (pid, exit status); removes them from pids."""
    gone = []
    for pid in list(pids):
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            gone.append((pid, os.waitstatus_to_exitcode(status)))
        pids.remove(pid)
    return gone


def stop_workers(pids: list[int], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (uvicorn finishes open answers), then SIGKILL what is left after grace_s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        reap(pids)
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    pids.clear()
