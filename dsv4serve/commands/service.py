"""Running as a service: `ps`, `logs`, `stop` (`up -d` is in serve.py, its report in service/up.py)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from dsv4serve.commands.options import JsonOpt


def say(text: str) -> None:
    sys.stderr.write(f"dsv4serve: {text}\n")
    sys.stderr.flush()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def register(app: typer.Typer) -> None:
    @app.command("ps")
    def ps_command(as_json: JsonOpt = False) -> None:
        """List the detached servers: state (or health), endpoint, GPUs, uptime, memory per GPU."""
        from dsv4serve.hardware.inventory import gib
        from dsv4serve.render import console, print_json
        from dsv4serve.service import ops, state

        records = state.read_all()
        memory = ops.gpu_memory(records)
        rows = [ops.status(r, memory) for r in records]
        shown = [r.shown_health() for r in records]
        if as_json:
            print_json({"servers": rows})
            return
        out = console()
        if not rows:
            out.print("no detached servers (start one with `dsv4serve up PROFILE -d`)", markup=False)
            return
        out.print(
            f"{'NAME':16} {'PROFILE':12} {'STATE':13} {'ENDPOINT':28} {'UPTIME':8} GPUS (memory)",
            markup=False,
        )
        for row, state_shown in zip(rows, shown, strict=True):
            gpus = ", ".join(
                f"{g} ({gib(row['memory_per_gpu'][g])})" if g in row["memory_per_gpu"] else g
                for g in row["gpus"]
            )
            out.print(
                f"{row['name']:16} {row['profile']:12} {state_shown:13} {row['endpoint']:28} "
                f"{_age(row['uptime_s']):8} {gpus or 'cpu'}",
                markup=False,
                crop=False,
                overflow="ignore",
            )
            if row["health_reason"] or row["restarts"]:
                restarts = f" (restarts: {row['restarts']})" if row["restarts"] else ""
                out.print(f"  {row['health_reason'] or 'restarted'}{restarts}", markup=False, crop=False)

    @app.command("logs")
    def logs_command(
        name: Annotated[str, typer.Argument(help="The server's name (see `dsv4serve ps`).")],
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
        tail: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option("--tail", min=0, help="Only the last N lines (default: all; with -f: 40)."),
        ] = None,
    ) -> None:
        """Print a detached server's vLLM log (secrets masked)."""
        from dsv4serve.redact import mask_text
        from dsv4serve.service import ops, state

        record = state.require(name)
        if follow:
            try:
                for line in ops.follow(record, 40 if tail is None else tail):
                    sys.stdout.write(mask_text(line) + "\n")
                    sys.stdout.flush()
            except KeyboardInterrupt:
                return
            return
        for line in ops.tail(record.log, -1 if tail is None else tail):
            sys.stdout.write(mask_text(line) + "\n")

    @app.command("stop")
    def stop_command(
        name: Annotated[Optional[str], typer.Argument(help="The server's name.")] = None,  # noqa: UP045
        all_: Annotated[bool, typer.Option("--all", help="Stop every detached server.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Stop a detached server as Ctrl-C would: SIGTERM, grace, SIGKILL; GPU memory checked back."""
        from dsv4serve.errors import LaunchError, UsageError
        from dsv4serve.render import print_json
        from dsv4serve.service import ops, state

        if bool(name) == all_:
            raise UsageError("name one server or give --all", "see `dsv4serve ps`")
        records = state.read_all() if all_ else [state.require(name)]
        t0 = time.monotonic()
        results = [ops.stop(r, say) for r in records]
        if as_json:
            print_json({"stopped": results, "stop_s": round(time.monotonic() - t0, 2)})
        bad = [r for r in results if not r["stopped"]]
        if bad:
            detail = "; ".join(
                f"{r['name']}: processes left {r['processes_left']}"
                + "".join(f", {g}" for g in r["gpu_memory_held"])
                for r in bad
            )
            raise LaunchError(
                f"not everything stopped: {detail}", "`dsv4serve gpus` shows what holds the GPUs"
            )
        if not as_json:
            for r in results:
                say(f"{r['name']} stopped")
