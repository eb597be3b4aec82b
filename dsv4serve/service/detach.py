"""`up --detach`: start the supervisor in a session of its own, then follow its state record until the
server is ready (exit 0) or failed (its error and exit code)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from dsv4serve.errors import EXIT_SIGNAL_BASE, DsvError, LaunchError, UsageError
from dsv4serve.service import state
from dsv4serve.service.supervisor import spec_to_dict
from dsv4serve.serving import procs
from dsv4serve.serving.spec import LaunchSpec

POLL_S = 0.2
SUPERVISOR = ("-m", "dsv4serve.service.supervisor")


def plan_digest(plan) -> str:
    """A short hash of what was planned (the vLLM argv, secrets masked): two records with one digest
    run the same plan."""
    from dsv4serve.redact import masked_args

    return hashlib.sha256("\0".join(masked_args(plan.args)).encode()).hexdigest()[:16]


def claim(name: str) -> None:
    """Refuse a name whose server runs; forget the record of one whose supervisor is gone."""
    record = state.read(state.check_name(name))
    if record is None:
        return
    if record.supervisor_alive():
        raise UsageError(
            f"a server named {name!r} is {record.shown_state()} (supervisor pid {record.supervisor_pid})",
            f"stop it first (`dsv4serve stop {name}`) or pick another name with --name",
        )
    state.remove(name)


def start(spec: LaunchSpec, plan, name: str, show) -> state.Record:
    """Start the detached supervisor for spec and wait until it is ready; return its record.

    Failures raise the supervisor's error with its exit code; Ctrl-C or SIGTERM here stops the
    half-started server (nothing is left behind a start that was abandoned). `show`: a
    console.PhaseDisplay."""
    record = state.Record(
        name=name,
        profile=plan.profile,
        supervisor_pid=0,
        supervisor_start=0,
        host=spec.host,
        port=spec.port,
        log=str(spec.log_path or ""),
        started_at=round(time.time(), 3),
        plan_digest=plan_digest(plan),
        gpus=tuple(g.uuid or str(g.index) for g in plan.gpus) if plan.device == "cuda" else (),
        gpu_memory_before=spec.gpu_memory_before,
        model=spec.served_model_name,
    )
    payload = json.dumps({"spec": spec_to_dict(spec), "record": record.to_dict()}).encode()
    try:
        proc = subprocess.Popen(
            [sys.executable, *SUPERVISOR],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal: Ctrl-C and a closed terminal do not reach it
            cwd="/",
            preexec_fn=procs.unblock_stop_signals,  # noqa: PLW1509 - only sigprocmask
        )
    except OSError as err:
        raise LaunchError(
            f"cannot start the supervisor: {err.strerror or err}", "check the Python environment"
        ) from None
    assert proc.stdin is not None
    proc.stdin.write(payload)  # the environment (token, API key) goes through a pipe, never the argv
    proc.stdin.close()
    with procs.stop_on_signals():
        try:
            return _follow(proc, name, show)
        except (KeyboardInterrupt, procs.Stopped) as stop:
            signum = stop.signum if isinstance(stop, procs.Stopped) else signal.SIGINT
            with procs.signals_deferred():
                show.close()
                show.line("dsv4serve: stopping the server that was starting")
                stop_supervisor(proc.pid, 30.0)
                state.remove(name)
            raise DsvError("stopped before the server was ready", "", EXIT_SIGNAL_BASE + signum) from None


def _follow(proc: subprocess.Popen, name: str, show) -> state.Record:
    t0 = time.monotonic()
    shown = progress = ""
    while True:
        code = proc.poll()
        record = state.read(name)
        if record is not None and record.supervisor_pid == proc.pid:
            if record.phase != shown and record.state != "ready":
                shown = record.phase
                show.phase(record.phase, time.monotonic() - t0)
            if record.progress and record.progress != progress:
                progress = record.progress
                show.progress(progress, time.monotonic() - t0)
            if record.state == "ready":
                show.close()
                return record
            if record.state == "failed":
                show.close()
                proc.wait()
                state.remove(name)  # up -d reported it; the log stays
                err = record.error
                # LaunchError: its message may carry vLLM's last log lines, shown as lines
                message = err.get("message", "the server failed")
                raise LaunchError(message, err.get("hint", ""), record.exit_code or 5)
        if code is not None:
            show.close()
            state.remove(name)
            raise LaunchError(f"the supervisor exited with code {code} before the server was ready", "")
        time.sleep(POLL_S)


def stop_supervisor(pid: int, timeout_s: float) -> bool:
    """SIGTERM the supervisor (it runs the stop sequence) and wait until it is gone; True if it went."""
    started = state.start_time(pid)
    if started is None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout_s
    while state.alive(pid, started):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # our child when up -d stops it: reap it
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)
    return True
