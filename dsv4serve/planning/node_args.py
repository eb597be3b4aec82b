"""Each node's command (pure): the layout's sizes in vLLM's argv, and the flags of vLLM's own multi-node
launch, per node.

vLLM's multiprocessing backend across nodes (vLLM 0.26 and 0.32 alike, engine/arg_utils.py and
entrypoints/cli/serve.py run_headless):
- TP or TP x PP: every node runs `vllm serve ... --nnodes N --node-rank K --master-addr A
  --master-port P`; node 0 serves the API, the others add `--headless` (workers joined to rank 0's
  torch.distributed store at A:P).
- DP+EP: node 0 runs `--data-parallel-size D --data-parallel-size-local L --data-parallel-address A
  --data-parallel-rpc-port P` and serves the API; node K adds `--data-parallel-start-rank K*L
  --headless` (vLLM docs, data_parallel_deployment.md).
- Ray (`--executor ray`): a Ray cluster spans the nodes and only the head runs vLLM, with
  `--distributed-executor-backend ray` (or `--data-parallel-backend ray` for DP); a worker's command
  is `ray start --address=A:6379 --block`, and the head's cluster starts with `ray start --head`.
"""

from __future__ import annotations

import dataclasses

from dsv4serve.errors import UsageError
from dsv4serve.planning.strategy import Layout, expert_parallel
from dsv4serve.planning.types import NodePlan, Overrides, Plan
from dsv4serve.profiles.types import Profile

HEAD_PLACEHOLDER = "HEAD_ADDR"  # the head's address when the plan was not given --master-addr
RAY_PORT = 6379  # `ray start --head`'s default GCS port
_SIZES = ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size")


def layout_args(args: tuple[str, ...], layout: Layout, profile: Profile) -> tuple[str, ...]:
    """vLLM's args with the layout's PP/DP sizes after the TP size, and expert parallelism per strategy.
    A one-node TP plan comes back unchanged."""
    out = list(args)
    extra = []
    if layout.pp > 1:
        extra += ["--pipeline-parallel-size", str(layout.pp)]
    if layout.dp > 1:
        extra += ["--data-parallel-size", str(layout.dp)]
    at = _after_sizes(out)
    out[at:at] = extra
    wanted = expert_parallel(layout, profile)
    if wanted and "--enable-expert-parallel" not in out:
        at = _after_sizes(out)
        out[at:at] = ["--enable-expert-parallel"]
    elif not wanted:
        out = [a for a in out if a != "--enable-expert-parallel"]
    return tuple(out)


def _after_sizes(args: list[str]) -> int:
    """The index just after the parallel sizes (--tensor-parallel-size N and the PP/DP sizes after it)."""
    at = args.index("--tensor-parallel-size") + 2
    while at + 1 < len(args) and args[at] in _SIZES:
        at += 2
    return at


def node_plans(
    args: tuple[str, ...], env: tuple[tuple[str, str], ...], layout: Layout, overrides: Overrides
) -> tuple[NodePlan, ...]:
    """One entry per node, the head (rank 0, the API) first. The env is the same on every node: the
    nodes are alike, so each uses the same local GPUs."""
    if layout.nodes == 1:
        return (NodePlan(0, "head", ("vllm", "serve", *args), env),)
    addr = overrides.master_addr or HEAD_PLACEHOLDER
    if overrides.executor == "ray":
        backend = (
            "--data-parallel-backend" if layout.strategy == "dp-ep" else "--distributed-executor-backend"
        )
        head = NodePlan(0, "head", ("vllm", "serve", *_with(args, [backend, "ray"])), env)
        join = ("ray", "start", f"--address={addr}:{RAY_PORT}", "--block")
        return (head, *(NodePlan(k, "worker", join, env) for k in range(1, layout.nodes)))
    nodes = []
    for rank in range(layout.nodes):
        flags = _mp_flags(layout, rank, addr, overrides.master_port)
        base = args if rank == 0 else _without_endpoint(args)  # a headless node serves no API
        role = "head" if rank == 0 else "worker"
        nodes.append(NodePlan(rank, role, ("vllm", "serve", *_with(base, flags)), env))
    return tuple(nodes)


def _mp_flags(layout: Layout, rank: int, addr: str, port: int) -> list[str]:
    if layout.strategy == "dp-ep":
        local = layout.dp // layout.nodes
        flags = ["--data-parallel-size-local", str(local), "--data-parallel-address", addr]
        flags += ["--data-parallel-rpc-port", str(port)]
        return flags + (["--data-parallel-start-rank", str(rank * local), "--headless"] if rank else [])
    flags = ["--nnodes", str(layout.nodes), "--node-rank", str(rank), "--master-addr", addr]
    return flags + ["--master-port", str(port)] + (["--headless"] if rank else [])


def _with(args: tuple[str, ...], flags: list[str]) -> tuple[str, ...]:
    out = list(args)
    at = _after_sizes(out)
    out[at:at] = flags
    return tuple(out)


def _without_endpoint(args: tuple[str, ...]) -> tuple[str, ...]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--host", "--port"):
            skip = True
        else:
            out.append(arg)
    return tuple(out)


def node_plan(plan: Plan, rank: int) -> NodePlan:
    """The entry of node `rank` (plans without node entries are one node: the head)."""
    if not plan.nodes:
        return NodePlan(0, "head", ("vllm", "serve", *plan.args), plan.env)
    return plan.nodes[rank]


def with_nodes(plan: Plan, layout: Layout, overrides: Overrides, reason: str) -> Plan:
    """A plan with its node entries; its args and env stay the head's (what one-node code reads)."""
    nodes = node_plans(plan.args, plan.env, layout, overrides)
    notes = list(plan.notes)
    if layout.nodes > 1 and not overrides.master_addr:
        notes.append(
            f"{HEAD_PLACEHOLDER} stands for the head node's address, which every node must reach: "
            "pass --master-addr to fill it in"
        )
    if layout.nodes > 1 and overrides.executor == "ray":
        notes.append(
            f"--executor ray: start Ray first (`ray start --head --port={RAY_PORT}` on the head; each "
            "worker's command below joins it); only the head runs vLLM, and Ray places the ranks"
        )
    return dataclasses.replace(
        plan,
        notes=tuple(notes),
        args=nodes[0].argv[2:],
        strategy=layout.strategy,
        strategy_reason=reason,
        pipeline_parallel_size=layout.pp,
        data_parallel_size=layout.dp,
        executor=overrides.executor if layout.nodes > 1 else "mp",
        nodes=nodes,
    )


def cpu_nodes(local: Plan, profile: Profile, nodes: int, overrides: Overrides) -> Plan:
    """vLLM's CPU build across nodes: TP over every node's ranks, from the plan of one node's ranks."""
    if overrides.strategy not in (None, "tp"):
        raise UsageError(
            f"--strategy {overrides.strategy}: the CPU build runs tensor parallelism across nodes only",
            "leave --strategy out (or use tp) on the CPU",
        )
    if overrides.executor != "mp":
        raise UsageError("--executor ray plans GPU nodes only", "leave --executor out on the CPU")
    total = local.tensor_parallel_size * nodes
    heads = profile.model.attention_heads
    problems = list(local.problems)
    if heads > 0 and heads % total:
        problems.append(f"tensor parallel size {total} does not divide the {heads} attention heads")
    args = list(local.args)
    at = args.index("--tensor-parallel-size") + 1
    args[at] = str(total)
    plan = dataclasses.replace(
        local,
        tensor_parallel_size=total,
        args=tuple(args),
        problems=tuple(problems),
        fits=not problems,
        verdict=f"fits on {nodes} CPU nodes" if not problems else problems[0],
    )
    layout = Layout("tp", total, nodes=nodes)
    why = f"TP {total} across the {nodes} nodes, {local.tensor_parallel_size} rank(s) each (the CPU build)"
    return with_nodes(plan, layout, overrides, why)
