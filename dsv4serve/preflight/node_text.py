"""The plan's text for several nodes: the strategy and why, then each node's command, ready to paste."""

from __future__ import annotations

import shlex

from dsv4serve.planning.node_args import HEAD_PLACEHOLDER
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_MASTER_PORT, DEFAULT_PORT


def layout_title(plan) -> str:
    """ "TP 8", "TP 16 + EP", "DP 16 + EP", "TP 8 x PP 2 + EP" for the plan's title."""
    if plan.strategy == "dp-ep":
        text = f"DP {plan.data_parallel_size}" + (
            f" x TP {plan.tensor_parallel_size}" if plan.tensor_parallel_size > 1 else ""
        )
    else:
        text = f"TP {plan.tensor_parallel_size}"
        if plan.pipeline_parallel_size > 1:
            text += f" x PP {plan.pipeline_parallel_size}"
    return text + (" + EP" if "--enable-expert-parallel" in plan.args else "")


def shell(env, argv) -> str:
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env)
    return f"{assignments} {shlex.join(argv)}".strip()


def node_lines(plan, up: list[str]) -> list[str]:
    """Each node's command (env and argv), and the `dsv4serve up` that runs and watches it there.
    `up` is the start of that command (dsv4serve up PROFILE and the options every node shares)."""
    lines = [f"strategy: {plan.strategy_reason}"]
    head = plan.nodes[0]
    addr = (
        _flag(head.argv, "--master-addr") or _flag(head.argv, "--data-parallel-address") or HEAD_PLACEHOLDER
    )
    port = _flag(head.argv, "--master-port") or _flag(head.argv, "--data-parallel-rpc-port")
    for node in plan.nodes:
        if node.role == "head":
            where = f"{_flag(node.argv, '--host')}:{_flag(node.argv, '--port')}"
            lines.append(f"node {node.rank} (head: serves the API on {where}):")
        elif node.argv[0] == "ray":
            lines.append(f"node {node.rank} (worker: joins the head's Ray cluster):")
        else:
            lines.append(f"node {node.rank} (worker: headless):")
        lines.append("  " + shell(node.env, node.argv))
        if node.argv[0] != "ray":
            tail = up[up.index("--") :] if "--" in up else []
            own = [*up[: len(up) - len(tail)], "--nodes", str(len(plan.nodes)), "--node-rank", str(node.rank)]
            own += ["--master-addr", addr]
            if port and int(port) != DEFAULT_MASTER_PORT:
                own += ["--master-port", port]
            if plan.executor == "ray":
                own += ["--executor", "ray"]
            lines.append("  or, supervised by dsv4serve: " + shlex.join(own + tail))
    return lines


def _flag(argv, flag: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1]
    return None


def up_prefix(profile: str, plan, *, gpus, max_model_len, host, port, extra_args) -> list[str]:
    """`dsv4serve up PROFILE` and the options every node shares (its strategy pinned, so every node
    plans alike); node_lines adds each node's own. Args after `--` are kept for the end."""
    up = ["dsv4serve", "up", profile]
    if gpus:
        up += ["--gpus", gpus]
    if max_model_len:
        up += ["--max-model-len", str(max_model_len)]
    if host != DEFAULT_HOST:
        up += ["--host", host]
    if port != DEFAULT_PORT:
        up += ["--port", str(port)]
    up += ["--strategy", plan.strategy]
    return up + (["--", *extra_args] if extra_args else [])
