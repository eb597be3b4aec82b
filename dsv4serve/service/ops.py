"""What `ps`, `logs` and `stop` do with the state records (the commands only render)."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

from dsv4serve.service import state
from dsv4serve.service.detach import stop_supervisor
from dsv4serve.serving import procs

# The supervisor's stop: SIGTERM, vLLM's grace (15 s), SIGKILL, the drain and GPU checks (5 s each).
STOP_WAIT_S = 45.0
GROUP_GRACE_S = 10.0


def status(record: state.Record, gpu_memory: dict[str, int] | None = None) -> dict:
    """One row of `ps`: what the record says, checked against the processes that run now."""
    live = record.supervisor_alive()
    return {
        "name": record.name,
        "profile": record.profile,
        "state": record.shown_state(),
        "phase": record.phase,
        "health": record.health or None,  # ok, stalled, memory-growth (None: not watched)
        "health_reason": record.health_reason or None,
        "restarts": record.restarts,
        "endpoint": record.endpoint,
        "model": record.model,
        "gpus": list(record.gpus),
        "uptime_s": round(time.time() - record.started_at, 1) if live else None,
        "memory_per_gpu": {gpu: gpu_memory[gpu] for gpu in record.gpus if gpu in gpu_memory}
        if gpu_memory
        else {},
        "supervisor_pid": record.supervisor_pid if live else None,
        "pgid": record.pgid or None,
        "log": record.log,
        "started_at": record.started_at,
        "plan_digest": record.plan_digest,
        "error": record.error or None,
    }


def gpu_memory(records: list[state.Record]) -> dict[str, int]:
    """Bytes each server's processes hold per GPU (uuid or index), from NVML; {} without NVML/GPUs."""
    if not any(r.gpus for r in records):
        return {}
    try:
        from dsv4serve.hardware import inventory as hardware

        gpus = hardware.read_inventory().gpus
    except Exception:  # noqa: BLE001 - ps works without NVML; the column says "-"
        return {}
    ours = {pid for r in records if r.pgid for pid in procs.group_members(r.pgid)}
    used = {}
    for gpu in gpus:
        key = gpu.uuid or str(gpu.index)
        mine = [p.used for p in gpu.processes if p.pid in ours]
        used[key] = sum(mine) if mine else gpu.memory_used
    return used


def stop(record: state.Record, say: Callable[[str], None]) -> dict:
    """The Ctrl-C stop sequence for a detached server, then what is left: processes and GPU memory.
    The record is removed either way (what survived is in the result)."""
    supervisor_went = True
    if record.supervisor_alive():
        say(f"stopping {record.name} (supervisor pid {record.supervisor_pid}, vLLM group {record.pgid})")
        supervisor_went = stop_supervisor(record.supervisor_pid, STOP_WAIT_S)
        if not supervisor_went and record.supervisor_alive():  # still that process: never a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.supervisor_pid, signal.SIGKILL)
    # The supervisor is gone (killed, or stopped now); its watchdog stops vLLM's group, and we make
    # sure: SIGTERM, a grace, SIGKILL.
    if record.pgid and procs.group_members(record.pgid):
        say(f"stopping what is left of vLLM's process group {record.pgid}")
        procs.signal_group(record.pgid, signal.SIGTERM)
        if not procs.wait_group_gone(record.pgid, GROUP_GRACE_S):
            procs.signal_group(record.pgid, signal.SIGKILL)
            procs.wait_group_gone(record.pgid, 5.0)
    left = procs.group_members(record.pgid) if record.pgid else []
    held: list[str] = []
    if record.gpu_memory_before:
        try:
            held = procs.unreleased_gpu_memory(dict(record.gpu_memory_before), 512 * 2**20)
        except Exception as err:  # noqa: BLE001 - cannot check: say so, do not fail the stop
            say(f"warning: could not check GPU memory after stop: {err}")
    state.remove(record.name)
    return {
        "name": record.name,
        "stopped": not left and not held and supervisor_went,
        "processes_left": left,
        "gpu_memory_held": held,
    }


def tail(path: str, lines: int) -> list[str]:
    """The last `lines` lines of the log (all of them when lines < 0)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            if lines < 0:
                return log.read().splitlines()
            return list(collections.deque((line.rstrip("\n") for line in log), maxlen=lines))
    except OSError:
        return []


def follow(record: state.Record, start_lines: int, poll_s: float = 0.3) -> Iterator[str]:
    """The log's last lines, then each new line as it comes, until the supervisor is gone."""
    try:
        log = open(record.log, encoding="utf-8", errors="replace")  # noqa: SIM115 - held while following
    except OSError:
        return
    with log:
        *done, pending = log.read().split("\n")  # one read: no line lost between the tail and the rest
        yield from done[-start_lines:] if start_lines > 0 else (done if start_lines < 0 else [])
        while True:
            chunk = log.read()
            if chunk:
                pending += chunk
                *whole, pending = pending.split("\n")
                yield from whole
                continue
            if not record.supervisor_alive():
                if pending:
                    yield pending
                return
            time.sleep(poll_s)
