"""`up` on one node of several: this node's vLLM, supervised as on one node (supervise.run_server: its own
process group, no orphan), plus the line to the other nodes (control.py).

- The head (rank 0) serves the API. It is ready when its one-token completion succeeds, which vLLM
  can only answer once every node's ranks have joined; then it tells the workers READY. Its stop,
  whatever the cause (Ctrl-C, vLLM's exit, a lost worker), tells every worker to stop.
- A worker (rank > 0) runs vLLM headless; it is ready when the head says so, and stops its vLLM when
  the head says STOP (exit 0) or is lost (exit 5, one line saying so).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

from dsv4serve.nodes.control import CONTROL_PORT_OFFSET, HeadLink, HeadStopped, WorkerLink
from dsv4serve.serving.spec import Event, LaunchSpec, Notify
from dsv4serve.serving.supervise import run_server


def fingerprint(plan) -> tuple[str, str]:
    """(hash, summary) of what every node must agree on: nodes running different plans would hang in
    vLLM's collectives, so they refuse each other first."""
    summary = (
        f"{plan.profile} {plan.strategy} TP {plan.tensor_parallel_size} PP {plan.pipeline_parallel_size} "
        f"DP {plan.data_parallel_size} on {len(plan.nodes)} nodes x {max(len(plan.gpus), 1)}, "
        f"max_model_len {plan.max_model_len}"
    )
    return hashlib.sha256(summary.encode()).hexdigest()[:16], summary


def run_node(
    spec: LaunchSpec,
    plan,
    rank: int,
    master_addr: str,
    master_port: int,
    notify: Notify,
    on_ready: Callable,
) -> int:
    """Run this node's part until the deployment ends; return the exit code (LaunchError: exit 5)."""
    digest, summary = fingerprint(plan)
    if spec.health is not None and spec.health.policy == "restart":
        # One node cannot restart alone (the others' collectives wait for it): the head stops (exit 6)
        # and the deployment with it, for the service manager to start again.
        spec = dataclasses.replace(spec, health=dataclasses.replace(spec.health, policy="stop"))
    port = master_port + CONTROL_PORT_OFFSET

    def say(kind: str, text: str) -> None:
        notify(Event(kind, text))

    if rank == 0:
        head = HeadLink(master_addr, port, len(plan.nodes), digest, summary, say)
        head.start()

        def head_notify(event: Event) -> None:
            if event.kind == "stopping":  # first, so the workers stop alongside this node
                head.stop("the head node is stopping")
            notify(event)

        def head_ready(server) -> None:
            head.ready()
            on_ready(server)

        try:
            return run_server(spec, head_notify, head_ready, head.check)
        finally:
            head.stop("the head node stopped")
            head.close()
    worker = WorkerLink(master_addr, port, rank, len(plan.nodes), digest, summary, say)
    worker.start()
    try:
        return run_server(spec, notify, on_ready, worker.check)
    except HeadStopped as stop:
        say("stopped", f"the head ended the deployment ({stop}): this worker node stopped")
        return 0
    finally:
        worker.close()
