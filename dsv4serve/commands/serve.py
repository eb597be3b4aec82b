"""`up` (plan, weights, start, supervise) and `smoke` (up, one chat request, clean stop): thin commands
over dsv4serve.serving (the launch spec, the chat request) and dsv4serve.serving.launch (the server)."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Annotated, Optional

import typer

from dsv4serve.commands.engine_options import EngineOpt, QuantOpt, RamOpt, ThinkingOpt, engine_options
from dsv4serve.commands.options import (
    ApiKeyFileOpt,
    CudaGraphsOpt,
    DetachOpt,
    ExecutorOpt,
    GpusOpt,
    HardwareOpt,
    HostOpt,
    JsonOpt,
    MasterAddrOpt,
    MasterPortOpt,
    MaxModelLenOpt,
    MaxRestartsOpt,
    MemoryMarginOpt,
    NameOpt,
    NodeRankOpt,
    NodesOpt,
    OnUnhealthyOpt,
    PassThrough,
    PortOpt,
    ProfileArg,
    ProfileDirOpt,
    SpecOpt,
    SpecTokensOpt,
    StallOpt,
    StrategyOpt,
    TrafficWarmupOpt,
    VerboseOpt,
    WarmupOpt,
)
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_MASTER_PORT, DEFAULT_PORT

MAX_TIMEOUT_S = 7 * 24 * 3600


def _check_timeout(value: float | None) -> float | None:
    """--timeout: a finite number of seconds (nan and inf would wait forever or never)."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise typer.BadParameter(f"{value}: expected seconds, more than 0 and at most {MAX_TIMEOUT_S}")
    return value


TimeoutOpt = Annotated[
    Optional[float],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--timeout",
        help="Seconds to wait for readiness (default: the profile's, or from its size).",
        callback=_check_timeout,
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the plan and the vLLM command; start nothing.")
]
NoDownloadOpt = Annotated[
    bool, typer.Option("--no-download", help="Use weights already on disk; fail rather than download.")
]


def register(app: typer.Typer) -> None:
    @app.command("up", cls=PassThrough)
    def up_command(
        ctx: typer.Context,
        profile: ProfileArg,
        gpus: GpusOpt = None,
        port: PortOpt = DEFAULT_PORT,
        host: HostOpt = DEFAULT_HOST,
        max_model_len: MaxModelLenOpt = None,
        cuda_graphs: CudaGraphsOpt = None,
        hardware: HardwareOpt = None,
        timeout: TimeoutOpt = None,
        dry_run: DryRunOpt = False,
        no_download: NoDownloadOpt = False,
        warmup: WarmupOpt = None,
        traffic_warmup: TrafficWarmupOpt = None,
        nodes: NodesOpt = None,
        node_rank: NodeRankOpt = 0,
        master_addr: MasterAddrOpt = None,
        master_port: MasterPortOpt = DEFAULT_MASTER_PORT,
        strategy: StrategyOpt = None,
        executor: ExecutorOpt = "mp",
        spec: SpecOpt = None,
        spec_tokens: SpecTokensOpt = None,
        profile_dir: ProfileDirOpt = None,
        detach: DetachOpt = False,
        name: NameOpt = None,
        verbose: VerboseOpt = False,
        api_key_file: ApiKeyFileOpt = None,
        on_unhealthy: OnUnhealthyOpt = None,
        stall_s: StallOpt = None,
        memory_margin: MemoryMarginOpt = None,
        max_restarts: MaxRestartsOpt = None,
        engine: EngineOpt = None,
        quant: QuantOpt = None,
        ram: RamOpt = None,
        thinking: ThinkingOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Serve PROFILE (vLLM, llama.cpp or Transformers: --engine) in the foreground until Ctrl-C (args
        after -- go to the engine). Several
        nodes: the same command on each, with --nodes N, its own --node-rank and the head's --master-addr."""
        from dsv4serve.preflight.nodes import NodeOptions, check
        from dsv4serve.render import console, print_json
        from dsv4serve.service import keys
        from dsv4serve.service.console import terminal_notify
        from dsv4serve.serving.chat import curl_line
        from dsv4serve.serving.checks import deepseek_v4_chat
        from dsv4serve.serving.health import watch_config, watch_options
        from dsv4serve.serving.prepare import arg_value, prepare_launch
        from dsv4serve.serving.supervise import run_server

        given = NodeOptions(nodes, node_rank, master_addr, master_port, strategy, executor)
        node_options = check(given, starting=not dry_run)
        if detach and (nodes or 1) > 1:
            from dsv4serve.errors import UsageError

            raise UsageError("--detach serves one node; several nodes run `up` in the foreground", "drop -d")
        if detach and name is not None:
            from dsv4serve.service.state import check_name

            check_name(name)
        api_key = keys.read_api_key(api_key_file)
        watching = watch_options(on_unhealthy, stall_s, memory_margin, max_restarts)

        plan, spec = prepare_launch(
            profile,
            profile_dirs=profile_dir or (),
            gpus=gpus,
            hardware=hardware,
            cuda_graphs=cuda_graphs,
            host=host,
            port=port,
            max_model_len=max_model_len,
            timeout=timeout,
            extra_args=ctx.args,
            dry_run=dry_run,
            allow_download=not no_download,
            progress=not as_json,
            as_json=as_json,
            warmup=warmup,
            traffic_warmup=traffic_warmup,
            node_options=node_options,
            engine_options=engine_options(engine, quant, ram, thinking),
            spec=spec,
            spec_tokens=spec_tokens,
        )
        bound = arg_value(plan.args, "--host") or host
        warning = None if node_rank > 0 else keys.exposure_warning(bound, api_key)
        if warning:
            sys.stderr.write(f"dsv4serve: {warning}\n")
        if spec is None:
            return
        spec = dataclasses.replace(keys.with_key(spec, api_key), health=watch_config(plan, watching))
        if detach:
            from dsv4serve.service.up import up_detached

            up_detached(spec, plan, name, as_json)
            return

        def on_ready(server) -> None:
            from dsv4serve.serving import sd_notify  # under systemd (export systemd: Type=notify): READY=1

            sd_notify.ready("worker ready" if spec.headless else f"ready: {server.base_url}/v1")
            if spec.headless:
                from dsv4serve.nodes.show import worker_ready

                worker_ready(server, plan, node_rank, master_addr, as_json)
                return
            url, model = server.base_url, spec.served_model_name
            if as_json:
                print_json(
                    {
                        "event": "ready",
                        "profile": plan.profile,
                        "endpoint": url + "/v1",
                        "model": model,
                        "ready_s": round(server.ready_s, 2),
                        "phases": server.phase_times,  # seconds from start to each phase's beginning
                        "pid": server.pgid,
                        "log": str(spec.log_path),
                    }
                )
                return
            out = console()
            out.print(f"ready in {server.ready_s:.1f} s: {url}/v1  (model: {model})", markup=False)
            plain = deepseek_v4_chat(spec.argv)  # vLLM 0.28+ thinks by default: ask for a plain answer
            curl = curl_line(url, model, bool(api_key), plain)
            out.print(curl, markup=False, crop=False, overflow="ignore")
            out.print(f"log: {spec.log_path}   Ctrl-C stops the server", markup=False)

        if len(plan.nodes) > 1 and executor == "mp":  # this node's vLLM, and the line to the others
            from dsv4serve.nodes.supervise import run_node

            notify = terminal_notify(quiet_log=not verbose)
            code = run_node(spec, plan, node_rank, master_addr, master_port, notify, on_ready)
        else:
            code = run_server(spec, terminal_notify(quiet_log=not verbose), on_ready)
        if code:
            raise typer.Exit(code)

    @app.command("smoke")
    def smoke_command(
        profile: ProfileArg,
        gpus: GpusOpt = None,
        port: PortOpt = DEFAULT_PORT,
        timeout: TimeoutOpt = None,
        warmup: WarmupOpt = None,
        traffic_warmup: TrafficWarmupOpt = None,
        profile_dir: ProfileDirOpt = None,
        api_key_file: ApiKeyFileOpt = None,
        verbose: VerboseOpt = False,
        engine: EngineOpt = None,
        quant: QuantOpt = None,
        ram: RamOpt = None,
        thinking: ThinkingOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Start PROFILE, send one chat completion through the openai client, stop: CI's check."""
        from dsv4serve.errors import LaunchError
        from dsv4serve.render import console, print_json
        from dsv4serve.service import keys
        from dsv4serve.service.console import terminal_notify
        from dsv4serve.serving import procs
        from dsv4serve.serving.chat import chat_once
        from dsv4serve.serving.checks import as_dicts, deepseek_v4_chat, run_checks
        from dsv4serve.serving.launch import running_server
        from dsv4serve.serving.prepare import prepare_launch

        api_key = keys.read_api_key(api_key_file)
        _, spec = prepare_launch(
            profile,
            profile_dirs=profile_dir or (),
            gpus=gpus,
            port=port,
            timeout=timeout,
            progress=not as_json,
            warmup=warmup,
            traffic_warmup=traffic_warmup,
            engine_options=engine_options(engine, quant, ram, thinking),
        )
        try:
            spec = keys.with_key(spec, api_key)
            with running_server(spec, terminal_notify(quiet_log=not verbose)) as server:
                result = {
                    "profile": profile,
                    "model": spec.served_model_name,
                    "ready_s": round(server.ready_s, 2),
                    "phases": server.phase_times,
                }
                result["engine"] = spec.engine
                result.update(
                    chat_once(server.base_url, spec.served_model_name, api_key=api_key, engine=spec.engine)
                )
                # DeepSeek-V4's chat: plain, thinking, tools apart (llama.cpp always serves V4 here)
                if spec.engine == "llama.cpp" or (spec.engine == "vllm" and deepseek_v4_chat(spec.argv)):
                    result["checks"] = as_dicts(run_checks(server.base_url, spec.served_model_name, api_key))
        except procs.Stopped as stop:
            raise typer.Exit(128 + stop.signum) from None
        left = procs.group_members(server.pgid)
        busy = procs.port_in_use(spec.host, spec.port)
        if left or busy:
            raise LaunchError(f"vLLM did not stop cleanly: processes left {left}, {busy or 'port free'}")
        if not (result["reply"] + result["reasoning"]).strip():  # thinking on: the reply may be all thought
            raise LaunchError("the chat completion returned an empty reply", f"read the log: {spec.log_path}")
        result.update(stopped_cleanly=True, pid=server.pgid, log=str(spec.log_path))
        if as_json:
            print_json(result)
            return
        out = console()
        out.print(f"smoke {profile}: ok ({spec.engine})", markup=False)
        out.print(f"  time to ready      {result['ready_s']:.1f} s", markup=False)
        out.print(f"  time to 1st token  {result['ttft_s']:.3f} s", markup=False)
        tps = result["tokens_per_s"]
        out.print(f"  tokens/s (decode)  {tps if tps is not None else '-'}", markup=False)
        out.print(f"  reply ({result['completion_tokens']} tokens): {result['reply']!r}", markup=False)
        for check in result.get("checks", ()):  # DeepSeek-V4: each on its own
            out.print(f"  {check['name'] + ' check':<18} ok: {check['detail']}", markup=False)
