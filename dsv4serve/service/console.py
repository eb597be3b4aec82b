"""A calm console for `up`: start-up phases (and a phase's n/N progress) on stderr, as a Rich progress
display on a terminal and as plain lines when piped; vLLM's own output stays in the log."""

from __future__ import annotations

import re
import sys
import threading

_COUNT = re.compile(r"(?P<n>\d+)/(?P<total>\d+)")


class PhaseDisplay:
    """phase(name, elapsed), progress(text, elapsed), line(text) and close(); safe from two threads."""

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._lock = threading.Lock()
        self._progress = None
        self._task = None

    def _start(self) -> None:
        if self._progress is not None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),  # n/N while a bar runs, nothing between bars
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("starting", total=None, count="")

    def phase(self, name: str, elapsed: float) -> None:
        with self._lock:
            if not self.live:
                self._write(f"dsv4serve: [{elapsed:7.1f} s] {name}")
                return
            self._start()
            self._progress.console.print(
                f"dsv4serve: [{elapsed:7.1f} s] {name}", markup=False, highlight=False
            )
            self._progress.update(self._task, description=name, total=None, completed=0, count="")

    def progress(self, text: str, elapsed: float) -> None:
        with self._lock:
            if not self.live:
                self._write(f"dsv4serve: [{elapsed:7.1f} s] {text}")
                return
            self._start()
            m = _COUNT.search(text)
            if m:
                total = int(m["total"])
                self._progress.update(
                    self._task,
                    description=text[: m.start()].strip(),
                    total=total,
                    completed=int(m["n"]),
                    count=m.group(),
                )
            else:
                self._progress.update(self._task, description=text)

    def line(self, text: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(text, markup=False, highlight=False)
            else:
                self._write(text)

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def terminal_notify(quiet_log: bool = False):
    """Callback for launch events: our phase lines on stderr (stdout stays for results), and vLLM's log
    unless quiet_log (then, on a terminal, the phases as a Rich progress display)."""

    from dsv4serve.redact import mask_text, masked_args

    display = PhaseDisplay(sys.stderr, live=None if quiet_log else False)

    def notify(event) -> None:
        text = mask_text(event.text)  # vLLM logs its arguments, credentials included
        if event.kind == "log":
            if not quiet_log:
                display.line(text)
        elif event.kind == "command":
            display.line(f"dsv4serve: $ {' '.join(masked_args(text.split(' ')))}")
        elif event.kind == "phase":
            display.phase(text, event.elapsed_s)
        elif event.kind == "progress":
            display.progress(text, event.elapsed_s)
        elif event.kind in ("started", "stopping", "stopped", "warning", "health", "restart"):
            prefix = "warning: " if event.kind == "warning" else ""
            display.line(f"dsv4serve: {prefix}{text}")
        if event.kind in ("ready", "stopping", "stopped"):
            display.close()

    return notify
