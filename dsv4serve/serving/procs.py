"""Process-group plumbing for launch.py: /proc scans, group signals, parent-death guards, port checks."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # Fields after the command name (which may contain spaces and parens): state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return sorted(pids)


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to every process of the group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies left, or a pid reused by someone else's group
        return False
    return True


def wait_group_gone(pgid: int, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Wait until no live process of the group remains; True if that happened in time."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def pdeathsig_preexec(sig: int = signal.SIGTERM):
    """A Popen preexec_fn: the child gets `sig` when the thread that started it dies (Linux only)."""
    parent = os.getpid()

    def preexec() -> None:
        unblock_stop_signals()
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: the watchdog still covers us
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def unblock_stop_signals() -> None:
    """A Popen preexec_fn: a child must not inherit the stop signals blocked by signals_held()."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# The watchdog runs outside the server's group and its session, so neither a terminal Ctrl-C nor a
# group kill reaches it. It exits when the group is gone; if dsv4serve dies first (even by SIGKILL) it
# stops the group itself: PR_SET_PDEATHSIG reaches only vLLM's main process, not EngineCore/workers.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
pgid, parent, grace, tmpdir = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
def live():
    n = 0
    for e in os.listdir('/proc'):
        if e.isdigit():
            try:
                s = open('/proc/%s/stat' % e).read()
            except OSError:
                continue
            f = s[s.rfind(')') + 2:].split()
            if int(f[2]) == pgid and f[0] not in 'ZX':
                n += 1
    return n
def kill(sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
while os.getppid() == parent:
    if not live():
        sys.exit(0)
    time.sleep(0.2)
# Signal only a group seen alive: once it is empty its id is free for the system to hand out again.
if live():
    kill(signal.SIGTERM)
    end = time.monotonic() + grace
    while live() and time.monotonic() < end:
        time.sleep(0.1)
    if live():
        kill(signal.SIGKILL)
if tmpdir:
    shutil.rmtree(tmpdir, ignore_errors=True)
"""


def watchdog_argv(pgid: int, parent_pid: int, grace_s: float, tmpdir: str = "") -> list[str]:
    """argv of the watchdog process that guards group pgid for as long as parent_pid lives."""
    return [sys.executable, "-c", _WATCHDOG, str(pgid), str(parent_pid), str(grace_s), tmpdir]


def port_in_use(host: str, port: int) -> str | None:
    """None if host:port can be bound now, else the reason (a listener, a bad address, ...)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option uvicorn uses: a port in TIME_WAIT after a stop is free, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot bind {host}:{port}: {err.strerror or err}"
    return None


def connect_host(host: str) -> str:
    """The address to reach a server bound to host from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def unreleased_gpu_memory(before: dict[str, int], slack: int, wait_s: float = 5.0) -> list[str]:
    """GPUs (by uuid or index, as in `before`) using more than slack bytes above `before`, via NVML."""
    from dsv4serve.hardware import inventory as hardware  # lazy: NVML only where there are GPUs

    end = time.monotonic() + wait_s  # the driver frees a dead process's memory with a short delay
    while True:
        held = []
        for gpu in hardware.read_inventory().gpus:
            key = gpu.uuid or str(gpu.index)
            if key in before and gpu.memory_used - before[key] > slack:
                more = (gpu.memory_used - before[key]) / 2**30
                held.append(f"GPU {gpu.index} has {more:.1f} GiB more in use than before the start")
        if not held or time.monotonic() >= end:
            return held
        time.sleep(0.5)


class Stopped(Exception):  # noqa: N818 - not an error: a signal asked us to stop
    """Raised in the main thread when SIGTERM/SIGHUP arrive (SIGINT raises KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP raise Stopped, SIGINT KeyboardInterrupt, in the main thread inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Stopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # Explicit, because a shell starting us in the background (`cmd &`) hands SIGINT over ignored.
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP inside the block; one that arrives is delivered when it ends.

    The mask alone is not enough: it is per thread, and the kernel hands a process-wide signal to
    any thread that does not block it (a log drain, an HTTP client's pool), whose C handler then
    makes the main thread run the Python one at once. So in the main thread the Python handlers are
    swapped for a recorder too, and what it records is raised again after the block.
    """
    held: list[int] = []
    swapped = {}
    if threading.current_thread() is threading.main_thread():
        swapped = {sig: signal.signal(sig, lambda signum, _f: held.append(signum)) for sig in STOP_SIGNALS}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        for sig, handler in swapped.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # what the mask kept is delivered here
        for sig in dict.fromkeys(held):  # once each, as a pending signal would be
            signal.raise_signal(sig)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
