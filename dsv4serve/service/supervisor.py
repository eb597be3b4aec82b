"""The detached supervisor: `python -m dsv4serve.service.supervisor`, started by `up -d` in a new session.

It is the foreground supervisor (launch.Server: vLLM in its own process group, a parent-death signal, a
watchdog outside the group that stops it if this process dies, even by SIGKILL; SIGTERM -> grace ->
SIGKILL; the GPU memory check) run by a process of its own, which keeps the state record current.
The launch spec comes on stdin, not the argv: its environment holds the hub token and the API key.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from dsv4serve.errors import EXIT_INTERNAL, EXIT_SIGNAL_BASE, DsvError
from dsv4serve.service import state
from dsv4serve.serving import procs
from dsv4serve.serving.launch import Server
from dsv4serve.serving.spec import Event, LaunchSpec


def spec_to_dict(spec: LaunchSpec) -> dict:
    return {
        "argv": list(spec.argv),
        "host": spec.host,
        "port": spec.port,
        "served_model_name": spec.served_model_name,
        "startup_timeout_s": spec.startup_timeout_s,
        "env": dict(spec.env),
        "log_path": str(spec.log_path) if spec.log_path else None,
        "grace_s": spec.grace_s,
        "probe_interval_s": spec.probe_interval_s,
        "gpu_memory_before": [list(pair) for pair in spec.gpu_memory_before],
        "engine": spec.engine,
        "warm_rounds": list(spec.warm_rounds),
    }


def spec_from_dict(data: dict) -> LaunchSpec:
    return LaunchSpec(
        argv=tuple(data["argv"]),
        host=data["host"],
        port=int(data["port"]),
        served_model_name=data["served_model_name"],
        startup_timeout_s=float(data["startup_timeout_s"]),
        env=dict(data["env"]),
        log_path=Path(data["log_path"]) if data.get("log_path") else None,
        grace_s=float(data["grace_s"]),
        probe_interval_s=float(data["probe_interval_s"]),
        gpu_memory_before=tuple((str(k), int(v)) for k, v in data["gpu_memory_before"]),
        engine=str(data.get("engine", "vllm")),
        warm_rounds=tuple(int(c) for c in data.get("warm_rounds", ())),
    )


class _Recorder:
    """Launch events into the state record: the vLLM group once started, the state as phases pass."""

    def __init__(self, record: state.Record):
        self.record = record
        self.server: Server | None = None
        # The drain thread reports phases while the main thread writes ready or failed.
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.kind == "started" and self.server is not None and self.server.pgid:
            pgid = self.server.pgid
            self._set(pgid=pgid, pgid_start=state.start_time(pgid) or 0)
        elif event.kind == "phase" and event.text != "ready":  # ready is written with its time
            self._set(phase=event.text, state=state.state_of_phase(event.text), progress="", late=True)
        elif event.kind == "progress":
            self._set(progress=event.text, late=True)

    def _set(self, late: bool = False, **changes) -> None:
        with self._lock:
            if late and self.record.state in ("ready", "failed"):  # a phase never goes back
                return
            self.record = state.update(self.record, **changes)


def supervise(spec: LaunchSpec, record: state.Record) -> int:
    """Run the server as `up` does in the foreground, keeping the record; return the exit code.

    A start-up failure leaves the record failed with the error (up -d reports it); a stop by a signal
    (`dsv4serve stop`) removes the record; vLLM exiting by itself after ready leaves it failed."""
    recorder = _Recorder(state.update(record))
    server = Server(spec, recorder)
    recorder.server = server
    code: int | None = None
    with procs.stop_on_signals():
        try:
            server.start()
            server.wait_ready()
            recorder._set(state="ready", phase="ready", ready_s=round(server.ready_s or 0.0, 2))
            code = server.wait()
            server.stop()
            code = code if code >= 0 else 128 - code
            recorder._set(
                state="failed",
                exit_code=code,
                error={
                    "message": f"vLLM exited by itself with code {code}",
                    "hint": f"read its log: {spec.log_path}",
                    "exit_code": code,
                },
            )
            return code
        except (KeyboardInterrupt, procs.Stopped) as stop:
            server.stop()
            signum = stop.signum if isinstance(stop, procs.Stopped) else signal.SIGINT
            state.remove(record.name)
            return 0 if server.ready_s is not None else EXIT_SIGNAL_BASE + signum
        except DsvError as err:
            server.stop()
            recorder._set(
                state="failed",
                exit_code=err.exit_code,
                error={"message": err.message, "hint": err.hint, "exit_code": err.exit_code},
            )
            return err.exit_code
        finally:
            server.stop()


def main() -> None:
    data = json.load(sys.stdin)
    sys.stdin.close()
    me = os.getpid()
    record = state._from_dict(
        {**data["record"], "supervisor_pid": me, "supervisor_start": state.start_time(me)}
    )
    try:
        code = supervise(spec_from_dict(data["spec"]), record)
    except Exception as err:  # noqa: BLE001 - a bug of ours: say so where up -d and ps look
        error = {
            "message": f"internal error in the supervisor: {type(err).__name__}: {err}",
            "hint": "report it, with the log",
            "exit_code": EXIT_INTERNAL,
        }
        state.update(record, state="failed", exit_code=EXIT_INTERNAL, error=error)
        code = EXIT_INTERNAL
    sys.exit(code)


if __name__ == "__main__":
    main()
