"""A worker node's ready line (the API is the head's)."""

from __future__ import annotations


def worker_ready(server, plan, rank: int, master_addr: str, as_json: bool) -> None:
    """A worker node's ready line: the API is the head's."""
    from dsv4serve.render import console, print_json

    if as_json:
        print_json(
            {
                "event": "ready",
                "profile": plan.profile,
                "role": "worker",
                "node_rank": rank,
                "head": master_addr,
                "ready_s": round(server.ready_s, 2),
                "pid": server.pgid,
            }
        )
        return
    console().print(
        f"node {rank} ready in {server.ready_s:.1f} s: a worker of the deployment the head node "
        f"({master_addr}) serves; Ctrl-C on the head stops every node",
        markup=False,
    )
