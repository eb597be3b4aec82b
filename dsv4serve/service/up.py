"""`up --detach`'s last step: start the supervisor, wait until ready, report where the server is."""

from __future__ import annotations

import sys


def up_detached(spec, plan, name: str | None, as_json: bool) -> None:
    """Start the supervisor, wait until ready, report (text or one JSON document)."""
    from dsv4serve.render import console, print_json
    from dsv4serve.service import detach
    from dsv4serve.service.console import PhaseDisplay

    name = name or plan.profile
    detach.claim(name)
    record = detach.start(spec, plan, name, PhaseDisplay(sys.stderr))
    if as_json:
        print_json(
            {
                "event": "ready",
                "name": name,
                "profile": plan.profile,
                "endpoint": record.endpoint,
                "model": record.model,
                "ready_s": record.ready_s,
                "supervisor_pid": record.supervisor_pid,
                "pid": record.pgid,
                "log": record.log,
            }
        )
        return
    out = console()
    out.print(
        f"{name} ready in {record.ready_s:.1f} s: {record.endpoint}  (model: {record.model})", markup=False
    )
    out.print(f"log: {record.log}   `dsv4serve stop {name}` stops it", markup=False)
