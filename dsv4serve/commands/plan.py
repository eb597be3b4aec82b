"""`gpus` and `plan`: thin commands over dsv4serve.planning (options.py plans, render.py prints)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsv4serve.commands.engine_options import EngineOpt, QuantOpt, RamOpt, ThinkingOpt, engine_options
from dsv4serve.commands.options import (
    CudaGraphsOpt,
    ExecutorOpt,
    GpusOpt,
    HardwareOpt,
    HostOpt,
    JsonOpt,
    MasterAddrOpt,
    MasterPortOpt,
    MaxModelLenOpt,
    NodesOpt,
    PassThrough,
    PortOpt,
    ProfileArg,
    ProfileDirOpt,
    SpecOpt,
    SpecTokensOpt,
    StrategyOpt,
    VllmVersionOpt,
    WarmupOpt,
)
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_MASTER_PORT, DEFAULT_PORT

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


def register(app: typer.Typer) -> None:
    @app.command("gpus")
    def gpus_command(as_json: JsonOpt = False) -> None:
        """List the GPUs NVML sees (honouring CUDA_VISIBLE_DEVICES): memory, compute capability, processes."""
        from dsv4serve.hardware.inventory import read_inventory
        from dsv4serve.preflight.render import render_inventory

        render_inventory(read_inventory(), as_json)

    @app.command("plan", cls=PassThrough)
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
        vllm_version: VllmVersionOpt = None,
        spec: SpecOpt = None,
        spec_tokens: SpecTokensOpt = None,
        engine: EngineOpt = None,
        quant: QuantOpt = None,
        ram: RamOpt = None,
        thinking: ThinkingOpt = None,
        profile_dir: ProfileDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Plan PROFILE: the engine, context, memory per GPU (and RAM), the command (args after -- go to
        the engine)."""
        from dsv4serve.preflight.engine_choice import plan_for_engine
        from dsv4serve.preflight.node_text import up_prefix
        from dsv4serve.preflight.nodes import NodeOptions, check
        from dsv4serve.preflight.options import ensure_fits
        from dsv4serve.preflight.render import render_plan

        node_options = check(
            NodeOptions(nodes, 0, master_addr, master_port, strategy, executor), starting=False
        )
        _, plan = plan_for_engine(
            profile,
            engine_options(engine, quant, ram, thinking),
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
            vllm_version=vllm_version,
            spec=spec,
            spec_tokens=spec_tokens,
        )
        shared = dict(gpus=gpus, max_model_len=max_model_len, host=host, port=port, extra_args=ctx.args)
        render_plan(plan, as_json, up_prefix(profile, plan, **shared))
        ensure_fits(plan)
