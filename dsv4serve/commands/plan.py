"""`gpus` and `plan`; plus plan_from_options / render_plan / ensure_fits, which `up` reuses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Optional

import typer

from dsv4serve.nodes.options import (
    DEFAULT_MASTER_PORT,
    ExecutorOpt,
    MasterAddrOpt,
    MasterPortOpt,
    NodesOpt,
    StrategyOpt,
)
from dsv4serve.options import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    CudaGraphsOpt,
    GpusOpt,
    HardwareOpt,
    HostOpt,
    JsonOpt,
    MaxModelLenOpt,
    PortOpt,
    ProfileArg,
    ProfileDirOpt,
    WarmupOpt,
)

DeviceOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--device", help="cuda or cpu (default: cuda when GPUs are found, else cpu for CPU profiles)."
    ),
]
TensorParallelOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--tensor-parallel-size", "--tp", help="Force the TP size (default: chosen by the planner)."
    ),
]


def resolve_inventory(profile, hardware: str | None = None, device: str | None = None):
    """Declared GPUs (--hardware), NVML, or the host CPU for profiles that may run there."""
    from dsv4serve.errors import HardwareError, UsageError
    from dsv4serve.hardware import cpu_inventory, parse_hardware, read_inventory

    if device not in (None, "cuda", "cpu"):
        raise UsageError(f"--device {device}: expected cuda or cpu")
    if hardware:
        return parse_hardware(hardware), ()
    if device == "cpu":
        return cpu_inventory(), ()
    try:
        inventory = read_inventory()
    except HardwareError as err:
        if profile.cpu_ok and device is None:
            return cpu_inventory(), (f"no usable NVIDIA GPU ({err.message}): planning the CPU path",)
        if profile.cpu_ok:
            raise
        raise _gpu_required(profile, err.message) from err
    if not inventory.gpus and profile.cpu_ok and device is None:
        return cpu_inventory(), ("no GPU visible (CUDA_VISIBLE_DEVICES?): planning the CPU path",)
    if not inventory.gpus and not profile.cpu_ok:
        raise _gpu_required(profile, "NVML shows no GPU (or CUDA_VISIBLE_DEVICES hides them)")
    if not inventory.gpus:
        raise HardwareError(
            f"no GPU visible to plan {profile.name} on (NVML found none, or CUDA_VISIBLE_DEVICES hides them)",
            "check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or plan with --hardware 2xH200",
        )
    return inventory, ()


def _gpu_required(profile, why: str):
    """The refusal of a GPU-only profile without a GPU, before anything is generated or downloaded."""
    from dsv4serve.errors import HardwareError

    cc = profile.model.min_compute_capability
    # vLLM's CPU build has no kernels for V4's sparse attention, mHC or FP8/MXFP4 layers.
    v4 = " (vLLM's CPU build cannot run DeepSeek-V4)" if profile.model.kv_cache is not None else ""
    gpus = profile.hardware[0].gpus if profile.hardware else 1
    return HardwareError(
        f"profile {profile.name!r} needs an NVIDIA GPU of compute capability {cc}+{v4}; {why}",
        f"run it on such a GPU, or see its plan with `dsv4serve plan {profile.name} --hardware {gpus}xH200`",
    )


def default_model_location(profile) -> str | None:
    """Where vLLM will load from when no path is given: the hub repo, the local path, or the generated dir."""
    from dsv4serve.plan import default_model_location as from_profile

    location = from_profile(profile)
    if location or not profile.model.generate:
        return location
    from dsv4serve.generated import checkpoint_dir

    return str(checkpoint_dir(profile.model.generate))


def plan_from_options(
    profile_name: str,
    *,
    profile_dirs: Sequence[str] = (),
    gpus: str | None = None,
    hardware: str | None = None,
    max_model_len: int | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    cuda_graphs: bool | None = None,
    tensor_parallel_size: int | None = None,
    extra_args: Sequence[str] = (),
    model_location: str | None = None,
    device: str | None = None,
    warmup: str | None = None,
    node_options=None,
):
    """Load the profile, take stock of the GPUs, select them, and plan: returns (profile, plan).
    node_options (nodes.options.NodeOptions): nodes, strategy, executor, the head's address."""
    from dsv4serve.commands.profiles import announce_shadowing
    from dsv4serve.hardware import select_gpus
    from dsv4serve.plan import Overrides, make_plan
    from dsv4serve.profiles import load_profile
    from dsv4serve.vllm_flags import settle_overrides

    profile = load_profile(profile_name, profile_dirs=tuple(profile_dirs or ()))
    announce_shadowing(profile_name, profile_dirs or ())
    inventory, notes = resolve_inventory(profile, hardware, device)
    from dsv4serve.nodes.options import NodeOptions, with_nodes

    node_options = node_options or NodeOptions()
    inventory = with_nodes(inventory, node_options.nodes)  # one node's GPUs, times the nodes
    selection = select_gpus(inventory, gpus)
    overrides = Overrides(
        model_location=model_location or default_model_location(profile),
        max_model_len=max_model_len,
        host=host,
        port=port,
        cuda_graphs=cuda_graphs,
        tensor_parallel_size=tensor_parallel_size,
        extra_args=tuple(extra_args),
        device=device or ("cpu" if not inventory.gpus else None),
        **startup_overrides(warmup),
        **node_options.overrides(),
    )
    # vLLM flags after `--` that the planner decides become its settings, or are refused (exit 2).
    profile, overrides = settle_overrides(profile, overrides)
    plan = make_plan(
        profile,
        selection.gpus,
        overrides,
        host_memory=inventory.host_memory_total,
        host_cpus=inventory.host_cpus,
        nodes=inventory.nodes,
    )
    if notes or selection.notes:
        plan = dataclasses.replace(plan, notes=(*notes, *selection.notes, *plan.notes))
    return profile, plan


def startup_overrides(warmup: str | None) -> dict:
    """The JIT cache env and the DeepGEMM warmup for Overrides; the user's own environment wins."""
    import os

    from dsv4serve import jit_cache

    if warmup is not None:
        jit_cache.check_warmup(warmup, "--warmup")
    elif os.environ.get(jit_cache.WARMUP_VAR):
        warmup = jit_cache.check_warmup(os.environ[jit_cache.WARMUP_VAR], jit_cache.WARMUP_VAR)
    return {
        "jit_cache_env": jit_cache.cache_env(jit_cache.default_root(), os.environ),
        "deep_gemm_warmup": warmup,
    }


def ensure_fits(plan) -> None:
    """Raise the exit-3 error of a plan that does not fit (after it was rendered)."""
    from dsv4serve.errors import HardwareError

    if plan.fits:
        return
    more = len(plan.problems) - 1
    message = plan.verdict + (
        f" (and {more} more problem{'s' if more > 1 else ''} above)" if more > 0 else ""
    )
    if plan.suggestions:
        hint = f"plan such a layout with --hardware {plan.suggestions[0]}, or pick GPUs with --gpus"
    else:
        hint = "see the problems above; `dsv4serve plan --help` lists the knobs"
    raise HardwareError(message, hint)


def _gib(n: int) -> str:
    from dsv4serve.hardware import gib

    return gib(n, unit="") if n else "-"


def render_plan(plan, as_json: bool = False, up: Sequence[str] = ()) -> None:
    """The per-GPU memory budget, the verdict, notes, problems and the pasteable command (or JSON).
    Several nodes: each node's command, and `up` + its node options to run it under dsv4serve."""
    from dsv4serve.plan import plan_to_dict, shell_line
    from dsv4serve.redact import masked_plan
    from dsv4serve.render import console, print_json

    plan = masked_plan(plan)  # secrets (HF_TOKEN, --api-key) never shown; vLLM gets the real values
    if as_json:
        print_json(plan_to_dict(plan))
        return
    from rich.table import Table

    out = console()
    where = "CPU" if plan.device == "cpu" else f"{len(plan.gpus)}x {plan.gpus[0].name}"
    layout = f"TP {plan.tensor_parallel_size}"
    if len(plan.nodes) > 1:  # the table is one node's, and every node is alike
        from dsv4serve.nodes.show import layout_title

        where, layout = f"{len(plan.nodes)} nodes x {where} (each alike)", layout_title(plan)
    table = Table(title=f"plan {plan.profile} on {where}: {layout}, max_model_len {plan.max_model_len}")
    for column in ("device", "name", "weights", "KV cache", "overhead", "total", "budget", "free", "fits"):
        table.add_column(column, justify="left" if column in ("device", "name") else "right")
    for row in plan.memory:
        ok = not row.budget or row.total <= row.budget
        table.add_row(
            row.device,
            row.name,
            _gib(row.weights),
            _gib(row.kv_cache),
            _gib(row.overhead),
            _gib(row.total),
            _gib(row.budget),
            _gib(row.free),
            "yes" if ok else "NO",
        )
    out.print(table)
    if plan.device == "cuda":
        out.print(
            f"budget = gpu_memory_utilization {plan.gpu_memory_utilization:g} x CUDA's total memory; "
            f"CUDA graphs {'on' if plan.cuda_graphs else 'off (--enforce-eager)'}"
        )
        row = plan.memory[0]
        if row.expected_used:
            out.print(
                f"once running, NVML should show about {_gib(row.expected_used)} GiB used per GPU "
                f"(vLLM fills the KV cache up to the budget)"
            )
        for line in _kv_lines(plan):
            out.print(line)
    for note in plan.notes:
        out.print(f"note: {note}")
    for problem in plan.problems:
        out.print(f"problem: {problem}")
    out.print(f"verdict: {plan.verdict}" if plan.fits else f"verdict: DOES NOT FIT: {plan.verdict}")
    if len(plan.nodes) > 1:
        from dsv4serve.nodes.show import node_lines

        for line in node_lines(plan, list(up) or ["dsv4serve", "up", plan.profile]):
            out.print(line, markup=False, crop=False, overflow="ignore")
        return
    if "pinned by" in plan.strategy_reason:
        out.print(f"strategy: {plan.strategy_reason}", markup=False)
    out.print(shell_line(plan), markup=False, crop=False, overflow="ignore")


def _kv_lines(plan) -> list[str]:
    """How the KV cache was sized, and what the smallest GPU's KV pool holds once running."""
    from dsv4serve.hardware import gib

    kv, lines = plan.kv, []
    if kv and kv.block_stride:
        lines.append(
            f"KV cache ({kv.layout}, the same on every TP rank): {kv.block_stride:,} B per "
            f"{kv.block_size}-token block = {kv.bytes_per_token:,.0f} B/token, plus "
            f"{kv.fixed_blocks_per_sequence} blocks (sliding window, compressor state) per decoding sequence"
        )
        lines.append(
            f"KV cache column = vLLM's start-up check: max_model_len {plan.max_model_len} with "
            f"{kv.in_flight_tokens:,} tokens in flight needs {gib(kv.startup_need, 2)} per GPU"
        )
    low = min(plan.memory, key=lambda r: r.kv_capacity_tokens)
    if low.kv_capacity_tokens:
        lines.append(
            f"KV cache capacity >= {low.kv_capacity_tokens:,} tokens per GPU, "
            f"{low.kv_capacity_seqs:,} sequences of {plan.max_model_len:,} tokens at once"
        )
    if low.vllm_kv_tokens:  # V4: vLLM's own figures weigh its groups' blocks differently (kv_v4)
        pool = low.budget - low.weights - low.overhead
        lines.append(
            f"vLLM will report: Available KV cache memory ~{gib(pool, 2)}, GPU KV cache size "
            f"~{low.vllm_kv_tokens:,} tokens, maximum concurrency ~{low.vllm_max_concurrency:.2f}x for "
            f"{plan.max_model_len:,}-token requests"
        )
    return lines


def _inventory_dict(inventory) -> dict:
    from dsv4serve.hardware import gpu_to_dict

    return {**dataclasses.asdict(inventory), "gpus": [gpu_to_dict(g) for g in inventory.gpus]}


def register(app: typer.Typer) -> None:
    @app.command("gpus")
    def gpus_command(as_json: JsonOpt = False) -> None:
        """List the GPUs NVML sees (honouring CUDA_VISIBLE_DEVICES): memory, compute capability, processes."""
        from dsv4serve.hardware import read_inventory
        from dsv4serve.render import console, print_json

        inventory = read_inventory()
        if as_json:
            print_json(_inventory_dict(inventory))
            return
        from rich.table import Table

        table = Table(
            title=f"driver {inventory.driver_version}, CUDA {inventory.cuda_driver_version} (memory in GiB)"
        )
        for column in ("index", "name", "uuid", "total", "used", "free", "cc", "processes"):
            table.add_column(column)
        for g in inventory.gpus:
            procs = ", ".join(f"{p.pid} {p.name} ({_gib(p.used)} GiB)" for p in g.processes) or "-"
            table.add_row(
                str(g.index),
                g.name,
                g.uuid,
                _gib(g.memory_total),
                _gib(g.memory_used),
                _gib(g.memory_free),
                g.compute_capability,
                procs,
            )
        console().print(table)

    @app.command("plan", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def plan_command(
        ctx: typer.Context,
        profile: ProfileArg,
        gpus: GpusOpt = None,
        hardware: HardwareOpt = None,
        max_model_len: MaxModelLenOpt = None,
        host: HostOpt = DEFAULT_HOST,
        port: PortOpt = DEFAULT_PORT,
        cuda_graphs: CudaGraphsOpt = None,
        tensor_parallel_size: TensorParallelOpt = None,
        device: DeviceOpt = None,
        warmup: WarmupOpt = None,
        nodes: NodesOpt = None,
        strategy: StrategyOpt = None,
        executor: ExecutorOpt = "mp",
        master_addr: MasterAddrOpt = None,
        master_port: MasterPortOpt = DEFAULT_MASTER_PORT,
        profile_dir: ProfileDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Plan PROFILE: TP size, context, memory per GPU, the vLLM command (args after -- go to vLLM)."""
        from dsv4serve.nodes.options import NodeOptions, check
        from dsv4serve.nodes.show import up_prefix

        node_options = check(
            NodeOptions(nodes, 0, master_addr, master_port, strategy, executor), starting=False
        )
        _, plan = plan_from_options(
            profile,
            profile_dirs=profile_dir or (),
            gpus=gpus,
            hardware=hardware,
            max_model_len=max_model_len,
            host=host,
            port=port,
            cuda_graphs=cuda_graphs,
            tensor_parallel_size=tensor_parallel_size,
            extra_args=ctx.args,
            device=device,
            warmup=warmup,
            node_options=node_options,
        )
        shared = dict(gpus=gpus, max_model_len=max_model_len, host=host, port=port, extra_args=ctx.args)
        render_plan(plan, as_json, up_prefix(profile, plan, **shared))
        ensure_fits(plan)
