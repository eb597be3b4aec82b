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
from dsv4serve.serving.health import WatchConfig
from dsv4serve.serving.spec import Event, LaunchSpec
from dsv4serve.serving.supervise import Supervision


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
        "health": spec.health.to_dict() if spec.health is not None else None,
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
        health=WatchConfig.from_dict(data["health"]) if data.get("health") else None,
    )


class _Recorder:
    """Launch events into the state record: the vLLM group once started, the state as phases pass, the
    health watch's state and the restarts."""

    def __init__(self, record: state.Record):
        self.record = record
        self.supervision: Supervision | None = None
        # The drain thread reports phases, the watch its state, while the main thread writes the rest.
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        server = self.supervision.server if self.supervision is not None else None
        if event.kind == "started" and server is not None and server.pgid:
            self._set(pgid=server.pgid, pgid_start=state.start_time(server.pgid) or 0)
        elif event.kind == "phase" and event.text != "ready":  # ready is written with its time
            if self.record.state == "restarting":
                self._set(phase=event.text, progress="")
            else:
                self._set(phase=event.text, state=state.state_of_phase(event.text), progress="", late=True)
        elif event.kind == "progress":
            self._set(progress=event.text, late=True)
        elif event.kind == "restart" and self.supervision is not None:
            again = event.text.startswith("restarted")
            self._set(
                state="ready" if again else "restarting",
                phase="ready" if again else self.record.phase,
                restarts=self.supervision.restarts,
                health="ok" if again else self.record.health,
                health_reason="" if again else self.record.health_reason,
            )

    def ready(self, server) -> None:
        watched = self.supervision is not None and self.supervision.config.policy != "off"
        self._set(
            state="ready",
            phase="ready",
            ready_s=round(server.ready_s or 0.0, 2),
            health="ok" if watched else "",
        )

    def health(self, status: dict) -> None:
        self._set(health=status["health"], health_reason=status["reason"])

    def _set(self, late: bool = False, **changes) -> None:
        with self._lock:
            if late and self.record.state in ("ready", "failed"):  # a phase never goes back
                return
            self.record = state.update(self.record, **changes)


def supervise(spec: LaunchSpec, record: state.Record) -> int:
    """Run the server as `up` does in the foreground (the same supervision and health policy), keeping
    the record; return the exit code.

    A start-up failure leaves the record failed with the error (up -d reports it); a stop by a signal
    (`dsv4serve stop`) removes the record; vLLM exiting by itself after ready (and not restarted), or
    the health policy stopping it, leaves it failed."""
    recorder = _Recorder(state.update(record))
    supervision = Supervision(
        spec,
        recorder,
        recorder.ready,
        on_health=recorder.health,
        metrics_path=state.metrics_path(record.name),
    )
    recorder.supervision = supervision
    with procs.stop_on_signals():
        try:
            code = supervision.run()
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
            supervision.stop()
            signum = stop.signum if isinstance(stop, procs.Stopped) else signal.SIGINT
            state.remove(record.name)
            return 0 if supervision.was_ready else EXIT_SIGNAL_BASE + signum
        except DsvError as err:
            supervision.stop()
            recorder._set(
                state="failed",
                exit_code=err.exit_code,
                error={"message": err.message, "hint": err.hint, "exit_code": err.exit_code},
            )
            return err.exit_code
        finally:
            supervision.stop()


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
