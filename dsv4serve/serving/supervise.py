"""One server from start to end under its health policy: the supervision every `up` runs (foreground,
detached, each node), built on launch.Server and the health watch (watch.py).

Once ready, the watch checks the server every interval. What it finds (stalled, memory-growth) goes to
the terminal and the log, and the policy (spec.health.policy) acts:
- warn: nothing more;
- restart: the group is killed (SIGKILL: a stalled engine finishes nothing, and a client whose request
  is cut sees its connection end, never a short answer that looks whole), then started again after a
  backoff (5, 10, 20 ... s, at most 300) and waited for as at the start; at most max_restarts in a row
  (a server that served healthy for RESET_AFTER_S starts the count again), then as stop. A server that
  exits by itself after ready is restarted the same way;
- stop: the group is killed and `up` exits 6 (UnhealthyError), for a service manager to restart.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from dsv4serve.errors import UnhealthyError
from dsv4serve.serving import procs, sd_notify
from dsv4serve.serving import ready as launch_ready
from dsv4serve.serving.health import WatchConfig
from dsv4serve.serving.launch import Server
from dsv4serve.serving.spec import Event, LaunchSpec, Notify, Watch
from dsv4serve.serving.watch import HealthWatch, Unhealthy

BACKOFF_MAX_S = 300.0
RESET_AFTER_S = 600.0  # healthy this long after a restart: the restart count starts again
OFF = WatchConfig(policy="off")


class Supervision:
    """run() one server until it ends; stop() from anywhere (idempotent)."""

    def __init__(
        self,
        spec: LaunchSpec,
        notify: Notify | None = None,
        on_ready: Callable[[Server], None] | None = None,
        watch: Watch | None = None,
        on_health: Callable[[dict], None] | None = None,
        metrics_path=None,
    ):
        self.spec = spec
        # A worker node has no API to probe: the head's watch speaks for the deployment.
        self.config = OFF if spec.headless or spec.health is None else spec.health
        self._notify = notify or (lambda event: None)
        self._on_ready = on_ready
        self._world = watch
        self._on_health = on_health
        self._metrics_path = metrics_path
        self.server: Server | None = None
        self.watch: HealthWatch | None = None
        self.restarts = 0
        self.was_ready = False

    def run(self) -> int:
        """Serve until vLLM exits by itself (its code, unless restarted) or the policy stops it."""
        while True:
            self.server = Server(self.spec, self._notify)
            self.server.start()
            self.server.wait_ready(self._starting)
            ready_at = time.monotonic()
            if not self.was_ready:
                self.was_ready = True
                if self._on_ready is not None:
                    self._on_ready(self.server)
            else:
                self._say("restart", f"restarted ({self.restarts} of {self.config.max_restarts}): ready")
                sd_notify.notify("READY=1\nSTATUS=ready again after a restart")
            self.watch = self._start_watch(self.server)
            try:
                code: int | None = self.server.wait(self._serving)
                why = f"vLLM exited by itself with code {code}"
            except Unhealthy as bad:
                code, why = None, f"{bad.state}: {bad.reason}"
            finally:
                self._close_watch()
            self.server.stop(kill=code is None)
            if code is not None and self.config.policy != "restart":
                return code if code >= 0 else 128 - code
            self._act(why, time.monotonic() - ready_at)

    def stop(self) -> None:
        self._close_watch()
        if self.server is not None:
            self.server.stop()

    # -- internals ---------------------------------------------------------------------------------

    def _act(self, why: str, served_s: float) -> None:
        """Under stop: raise (exit 6). Under restart: wait the backoff, or raise when the restarts ran out."""
        log = f" (its log: {self.spec.log_path})" if self.spec.log_path else ""
        if self.config.policy == "stop":
            raise UnhealthyError(
                f"{why}; the server was stopped (--on-unhealthy stop){log}",
                "--on-unhealthy restart restarts it in place; if it was compiling kernels, raise --stall-s",
            )
        if served_s >= RESET_AFTER_S:
            self.restarts = 0
        if self.restarts >= self.config.max_restarts:
            raise UnhealthyError(
                f"{why}; restarted {self.restarts} times in a row already (--max-restarts "
                f"{self.config.max_restarts}): the server was stopped{log}",
                "read the log; a server that fails after every start will not mend by restarting",
            )
        self.restarts += 1
        wait = min(self.config.backoff_s * 2 ** (self.restarts - 1), BACKOFF_MAX_S)
        self._say(
            "restart", f"{why}: restarting in {wait:.0f} s ({self.restarts} of {self.config.max_restarts})"
        )
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            if self._world is not None:
                self._world()

    def _start_watch(self, server: Server) -> HealthWatch | None:
        if self.config.policy == "off":
            return None

        def emit(kind: str, text: str) -> None:
            server.note(f"health: {text}")
            self._notify(
                Event(
                    "warning" if kind == "health" and not text.startswith("healthy") else kind,
                    f"health: {text}",
                    server.elapsed(),
                )
            )

        watch = HealthWatch(
            server.base_url,
            self.spec.served_model_name,
            server.pgid or 0,
            self.config,
            emit,
            api_key=launch_ready.api_key(self.spec),
            metrics_path=self._metrics_path,
            on_status=self._on_health,
        )
        watch.restarts = self.restarts
        return watch.start()

    def _close_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.close()

    def _starting(self) -> bool:
        """While a restart waits for ready: the world's hook, and systemd's watchdog fed (it is
        dsv4serve's own start, not a stall)."""
        if self.was_ready:
            sd_notify.notify("WATCHDOG=1")
        return self._world() if self._world is not None else True

    def _serving(self) -> bool:
        world = self._world() if self._world is not None else True
        if self.watch is not None:
            self.watch.check()
        return world

    def _say(self, kind: str, text: str) -> None:
        if self.server is not None:
            self.server.note(text)
        self._notify(Event(kind, text, self.server.elapsed() if self.server else 0.0))


def run_server(
    spec: LaunchSpec,
    notify: Notify | None = None,
    on_ready: Callable[[Server], None] | None = None,
    watch: Watch | None = None,
) -> int:
    """Start, wait until ready, supervise until vLLM exits or a signal asks to stop; return the exit code.

    Before ready: failures raise LaunchError; a signal returns 128+signal. After ready: a signal stops
    the server and returns 0; vLLM exiting by itself returns its own code (restarted under `restart`);
    the health policy may raise UnhealthyError (exit 6). What `watch` raises stops the server and
    propagates.
    """
    supervision = Supervision(spec, notify, on_ready, watch)
    with procs.stop_on_signals():
        try:
            return supervision.run()
        except (KeyboardInterrupt, procs.Stopped) as stop:
            supervision.stop()
            signum = stop.signum if isinstance(stop, procs.Stopped) else signal.SIGINT
            return 0 if supervision.was_ready else 128 + signum
        finally:
            supervision.stop()
