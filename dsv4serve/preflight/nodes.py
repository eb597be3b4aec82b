"""What the command line says about nodes and parallelism, and its checks (usage errors before planning)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dsv4serve.planning.types import DEFAULT_MASTER_PORT


@dataclass(frozen=True)
class NodeOptions:
    """What the command line says about nodes and parallelism."""

    nodes: int | None = None
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT
    strategy: str | None = None
    executor: str = "mp"

    def overrides(self) -> dict:
        """The Overrides fields these options set."""
        return {
            "strategy": self.strategy,
            "executor": self.executor,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
        }


def check(options: NodeOptions, *, starting: bool) -> NodeOptions:
    """Usage errors (exit 2) before anything is planned; `starting`: for `up`, which needs an address."""
    from dsv4serve.engines.vllm.flags import check_host
    from dsv4serve.errors import UsageError
    from dsv4serve.profiles.types import EXECUTORS, STRATEGIES

    if options.strategy is not None and options.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {options.strategy!r}: unknown", f"use one of {', '.join(STRATEGIES)}")
    if options.executor not in EXECUTORS:
        raise UsageError(f"--executor {options.executor!r}: unknown", f"use one of {', '.join(EXECUTORS)}")
    if options.master_addr is not None:
        check_host(options.master_addr, "--master-addr")
    nodes = options.nodes or 1
    if options.node_rank >= nodes:
        raise UsageError(
            f"--node-rank {options.node_rank}: a deployment of {nodes} node(s) has ranks 0 to {nodes - 1}",
            "give every node the same --nodes N and its own --node-rank",
        )
    if starting and nodes > 1 and not options.master_addr:
        raise UsageError(
            f"--nodes {nodes} needs --master-addr: the head node's address, reachable from every node",
            f"e.g. --nodes {nodes} --node-rank {options.node_rank} --master-addr 10.0.0.1",
        )
    if starting and options.executor == "ray" and options.node_rank > 0:
        raise UsageError(
            "--executor ray: a worker node joins the Ray cluster, it does not run vLLM",
            f"run `ray start --address={options.master_addr or 'HEAD_ADDR'}:6379 --block` on this node, "
            "and `dsv4serve up` on the head only",
        )
    return options


def with_nodes(inventory, nodes: int | None):
    """The inventory as `nodes` nodes of its GPUs; --nodes and a declared 2x8x... must agree."""
    from dsv4serve.errors import UsageError

    if nodes is None or nodes == inventory.nodes:
        return inventory
    if inventory.nodes != 1:
        raise UsageError(
            f"--nodes {nodes} and the {inventory.nodes} nodes of --hardware disagree",
            "give one of them",
        )
    return dataclasses.replace(inventory, nodes=nodes)
