"""Start vLLM, wait until it truly answers, supervise it, and leave nothing behind.

The only place that starts processes. vLLM runs in its own session/process group with its own TMPDIR;
its output is drained by a thread (an unread pipe kills vLLM while it loads) into a log file, a tail
buffer and the caller's callback. A watchdog outside the group stops the group if dsv4serve dies.
What counts as ready, and how long to wait for it, is serving.ready's; what happens once it serves
(the health watch, the restart policy) is serving.supervise's.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

from dsv4serve.engines.base import get_engine
from dsv4serve.engines.vllm.startup_log import Step
from dsv4serve.errors import LaunchError
from dsv4serve.redact import open_private_log
from dsv4serve.serving import procs
from dsv4serve.serving import ready as launch_ready
from dsv4serve.serving.spec import Event, LaunchSpec, Notify, Watch

TAIL_LINES = 40
STARTUP_GRACE_S = 3.0  # SIGTERM -> SIGKILL while vLLM is still starting
GPU_SLACK_BYTES = 512 * 2**20  # other tenants come and go; more than this is ours


class Server:
    """One vLLM server process group: start(), wait_ready(), wait(), stop()."""

    def __init__(self, spec: LaunchSpec, notify: Notify | None = None):
        self.spec = spec
        self._notify = notify or (lambda event: None)
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.tmpdir: str | None = None
        self.ready_s: float | None = None
        self.warm_s = 0.0  # of ready_s: the traffic warm-up's share
        self._t0 = 0.0
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._log = None
        self._drain: threading.Thread | None = None
        self._watchdog: subprocess.Popen | None = None
        self._engine = get_engine(spec.engine)
        self._output = self._engine.log_reader()
        self._stopped = False
        self._progress_at = float("-inf")  # monotonic time of vLLM's last progress report

    @property
    def who(self) -> str:
        """The server as messages name it: vLLM, llama-server, transformers serve."""
        names = {"llama.cpp": "llama-server", "transformers": "transformers serve"}
        return names.get(self._engine.name, "vLLM")

    @property
    def base_url(self) -> str:
        host = procs.connect_host(self.spec.host)
        return f"http://[{host}]:{self.spec.port}" if ":" in host else f"http://{host}:{self.spec.port}"

    @property
    def phase(self) -> str:
        return "ready" if self.ready_s is not None else self._output.tracker.phase

    @property
    def phase_times(self) -> dict[str, float]:
        """Seconds from the start to the beginning of each phase seen, in order; "ready" last."""
        times = dict(self._output.tracker.phase_times)
        if self.ready_s is not None:
            times["ready"] = round(self.ready_s, 2)
        return times

    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    def log_tail(self, n: int = TAIL_LINES) -> list[str]:
        return list(self._tail)[-n:]

    def start(self) -> None:
        """Check the port, then start vLLM in its own process group with its own TMPDIR."""
        busy = None if self.spec.headless else procs.port_in_use(self.spec.host, self.spec.port)
        if busy:
            raise LaunchError(
                f"{busy}; vLLM was not started",
                f"stop what listens there, or pick another port: --port {self.spec.port + 1}",
            )
        self.tmpdir = tempfile.mkdtemp(prefix="dsv4serve-vllm-")
        env = {**os.environ, **self.spec.env, "TMPDIR": self.tmpdir, "PYTHONUNBUFFERED": "1"}
        if self.spec.log_path:
            # 0600 in a 0700 directory: vLLM logs its arguments, credentials included
            self._log = open_private_log(self.spec.log_path)  # closed in stop()
        self._emit("command", " ".join(self.spec.argv))
        self._t0 = time.monotonic()
        # Signals wait until the group and its watchdog exist (else a group nobody guards or knows).
        with procs.signals_held():
            try:
                self.proc = subprocess.Popen(
                    list(self.spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.tmpdir,
                    start_new_session=True,
                    preexec_fn=procs.pdeathsig_preexec(),  # noqa: PLW1509 - only prctl, no locks taken
                )
            except OSError as err:
                self._cleanup_files()
                raise LaunchError(
                    f"cannot start {self.spec.argv[0]}: {err.strerror or err}",
                    "check the Python environment that runs vLLM",
                ) from err
            self.pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
            self._drain = threading.Thread(target=self._drain_output, name="vllm-log", daemon=True)
            self._drain.start()
            self._watchdog = subprocess.Popen(
                procs.watchdog_argv(self.pgid, os.getpid(), min(self.spec.grace_s, 5.0), self.tmpdir),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=procs.unblock_stop_signals,  # noqa: PLW1509 - only sigprocmask
            )
        self._emit(
            "started",
            f"{self.who} started: pid {self.pgid} (process group {self.pgid}), TMPDIR {self.tmpdir}",
        )

    def wait_ready(self, watch: Watch | None = None) -> float:
        """Block until /health is 200 and a one-token completion succeeds (headless: until `watch` says
        the world is ready); return seconds since start."""
        assert self.proc is not None
        deadline = self._t0 + self.spec.startup_timeout_s
        extension = launch_ready.StartExtension()  # under systemd: its start timeout waits as we do
        healthy = False
        while True:
            code = self.proc.poll()
            if code is not None:
                self._drain_join(5.0)
                raise self._early_exit_error(code)
            now = time.monotonic()
            extension.update(now, self._progress_at)
            if launch_ready.past_deadline(now, deadline, self._progress_at):
                raise LaunchError(
                    f"{self.who} did not become ready within {self.spec.startup_timeout_s:.0f} s "
                    f"(last phase: {self.phase}); its last log lines:\n{self._tail_text()}",
                    "raise the deadline with --timeout SECONDS (or serve.startup_timeout_s in the profile)"
                    + self._log_hint(),
                )
            world = watch() if watch is not None else True
            if self.spec.headless:
                ready = world
            else:
                healthy = healthy or launch_ready.http_status(self.base_url + "/health") == 200
                ready = healthy and launch_ready.one_token(
                    self.base_url, self.spec, max(1.0, deadline - time.monotonic())
                )
            if ready and self.spec.warm_rounds and not self.spec.headless:
                self._warm(deadline)
            if ready:
                self.ready_s = self.elapsed()
                self._emit("phase", "ready")
                self._emit("ready", "headless" if self.spec.headless else self.base_url)
                return self.ready_s
            time.sleep(self.spec.probe_interval_s)

    def _warm(self, deadline: float) -> None:
        """The traffic warm-up rounds (serving/warm.py) before ready: a failed round is a failed start."""
        from dsv4serve.serving.warm import warm_traffic

        self._emit("phase", "traffic warm-up")
        timeout = max(60.0, deadline - time.monotonic())
        try:
            rounds = warm_traffic(
                self.base_url,
                self.spec.served_model_name,
                self.spec.warm_rounds,
                timeout,
                launch_ready.api_key(self.spec),
                say=lambda text: self._emit("progress", text),
            )
        except OSError as err:
            raise LaunchError(
                f"vLLM answered one token but failed its traffic warm-up: {err}",
                "see the log; --no-traffic-warmup starts without it (the first batches may then stall)"
                + self._log_hint(),
            ) from None
        self.warm_s = sum(s for _, s in rounds)
        self._emit("log", "traffic warm-up: " + ", ".join(f"{what} {s:.1f} s" for what, s in rounds))

    def wait(self, watch: Watch | None = None) -> int:
        """Block until vLLM exits by itself (or `watch` raises); return its exit code."""
        assert self.proc is not None
        while True:
            try:
                return self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if watch is not None:
                    watch()

    def stop(self, kill: bool = False) -> int | None:
        """SIGTERM the group, wait the grace period, SIGKILL what is left; clean up. Idempotent.
        kill: SIGKILL at once (a stalled server finishes nothing; its clients must see the cut)."""
        if self._stopped:
            return self.proc.returncode if self.proc is not None else None
        with procs.signals_deferred():  # a second Ctrl-C must not abandon a half-stopped server
            code = self._stop(kill)
        self._stopped = True
        return code

    def note(self, text: str) -> None:
        """A line of dsv4serve's own in the server's log (the health watch's verdicts, restarts)."""
        log = self._log
        if log is not None:
            try:
                log.write(f"dsv4serve: {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
                log.flush()
            except (OSError, ValueError):
                pass

    def _stop(self, kill: bool = False) -> int | None:
        if self.proc is None:
            self._cleanup_files()
            return None
        if self.proc.poll() is None or procs.group_members(self.pgid):
            self._emit("stopping", f"stopping {self.who} (process group {self.pgid})")
            procs.signal_group(self.pgid, signal.SIGKILL if kill else signal.SIGTERM)
            # vLLM defers SIGTERM until its engine is up (seen: still loading 15 s later), and before
            # ready there are no requests to finish: a short grace, then SIGKILL.
            grace = self.spec.grace_s if self.ready_s is not None else min(self.spec.grace_s, STARTUP_GRACE_S)
            grace = 0.0 if kill else grace
            end = time.monotonic() + grace
            while time.monotonic() < end and (self.proc.poll() is None or procs.group_members(self.pgid)):
                time.sleep(0.05)
            if procs.group_members(self.pgid):
                if not kill:
                    self._emit("warning", f"{self.who} did not stop within {grace:.0f} s of SIGTERM: SIGKILL")
                procs.signal_group(self.pgid, signal.SIGKILL)
                procs.wait_group_gone(self.pgid, 5.0)
        code = self.proc.wait()
        left = procs.group_members(self.pgid)
        if left:
            self._emit("warning", f"processes of group {self.pgid} still alive after SIGKILL: {left}")
        self._drain_join(5.0)
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.kill()
            self._watchdog.wait()
        self._cleanup_files()
        self._check_gpu_memory()
        self._emit("stopped", f"{self.who} exited with code {code}")
        return code

    # -- internals ---------------------------------------------------------------------------------

    def _emit(self, kind: str, text: str) -> None:
        # A broken terminal must not stop the draining or the supervision.
        with contextlib.suppress(Exception):
            self._notify(Event(kind, text, self.elapsed()))

    def _drain_output(self) -> None:
        # read1, not readline: a progress bar redraws with CR for minutes before its newline comes.
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            for step in self._output.feed(chunk, self.elapsed(), track=self.ready_s is None):
                self._take(step)
        for step in self._output.close(self.elapsed(), track=self.ready_s is None):
            self._take(step)
        self.proc.stdout.close()

    def _take(self, step: Step) -> None:
        if step.phase:
            self._emit("phase", step.phase)
        if step.progress:
            self._progress_at = time.monotonic()
            self._emit("progress", step.progress)
        if step.log is None:
            return
        self._tail.append(step.log)
        log = self._log  # read once: stop() may close it and set None if this thread lingers
        if log is not None:
            try:
                log.write(step.log + "\n")
                log.flush()
            except (OSError, ValueError):
                pass
        if not step.redraw:  # the console has the progress line for it
            self._emit("log", step.log)

    def _drain_join(self, timeout_s: float) -> None:
        if self._drain is not None:
            self._drain.join(timeout_s)

    def _early_exit_error(self, code: int) -> LaunchError:
        tail = self._tail_text()
        hint = self._engine.exit_hint(tail)
        return LaunchError(
            f"{self.who} exited with code {code} during startup (after {self.elapsed():.1f} s, "
            f"phase: {self.phase}); its last {TAIL_LINES} log lines:\n{tail}",
            hint + self._log_hint(),
        )

    def _tail_text(self) -> str:
        return "\n".join("  | " + line for line in self.log_tail()) or "  | (no output)"

    def _log_hint(self) -> str:
        return f"; full log: {self.spec.log_path}" if self.spec.log_path else ""

    def _cleanup_files(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _check_gpu_memory(self) -> None:
        if not self.spec.gpu_memory_before:
            return
        try:
            held = procs.unreleased_gpu_memory(dict(self.spec.gpu_memory_before), GPU_SLACK_BYTES)
        except Exception as err:  # noqa: BLE001 - a failed check is a warning, not a failure
            self._emit("warning", f"could not check GPU memory after stop: {err}")
            return
        if held:
            self._emit(
                "warning",
                "GPU memory not released after vLLM stopped: "
                + "; ".join(held)
                + " (`dsv4serve gpus` shows the processes holding it)",
            )


@contextlib.contextmanager
def running_server(spec: LaunchSpec, notify: Notify | None = None) -> Iterator[Server]:
    """A ready server for the duration of the block (smoke, bench); stopped and cleaned up after."""
    server = Server(spec, notify)
    with procs.stop_on_signals():
        try:
            server.start()
            server.wait_ready()
            yield server
        finally:
            server.stop()
