"""`up` (plan, weights, start, supervise) and `smoke` (up, one chat request, clean stop)."""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer

from dsv4serve.commands.service import ApiKeyFileOpt, DetachOpt, NameOpt, VerboseOpt
from dsv4serve.nodes.options import (
    DEFAULT_MASTER_PORT,
    ExecutorOpt,
    MasterAddrOpt,
    MasterPortOpt,
    NodeRankOpt,
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
from dsv4serve.service.console import terminal_notify

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
# The vLLM entry point, run by the interpreter that runs dsv4serve (the CPU build, through the dist-info
# shim scripts/install.sh adds, and the GPU bundle both provide it).
VLLM_MAIN = ("-m", "vllm.entrypoints.cli.main", "serve")
SMOKE_PROMPT = "Say hello in five words."


def log_path(profile: str) -> Path:
    """A fresh log file under the user cache dir: $XDG_CACHE_HOME/dsv4serve/logs/PROFILE-TIME.log."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(base) / "dsv4serve" / "logs" / f"{profile}-{stamp}-{os.getpid()}.log"


def prepare_launch(
    profile_name: str,
    *,
    profile_dirs: Sequence[str] = (),
    gpus: str | None = None,
    hardware: str | None = None,
    cuda_graphs: bool | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_model_len: int | None = None,
    timeout: float | None = None,
    extra_args: Sequence[str] = (),
    dry_run: bool = False,
    allow_download: bool = True,
    progress: bool = True,
    as_json: bool = False,
    warmup: str | None = None,
    node_options=None,
):
    """Plan (the planner's argv), make the weights local, and build the LaunchSpec: (plan, spec|None).
    node_options (nodes.options.NodeOptions): the spec is that node's (a worker's: headless)."""
    from dsv4serve.commands.plan import ensure_fits, plan_from_options, render_plan
    from dsv4serve.jit_cache import ensure_dirs
    from dsv4serve.launch import LaunchSpec, startup_timeout
    from dsv4serve.redact import register as register_secrets
    from dsv4serve.redact import secret_values
    from dsv4serve.vllm_version import installed_vllm_version, require_vllm
    from dsv4serve.weights import fetch_weights

    if hardware and not dry_run:
        from dsv4serve.errors import UsageError

        raise UsageError(
            f"--hardware {hardware} only plans: nothing can start on GPUs that are declared, not present",
            "add --dry-run to see the command, or use `dsv4serve plan`",
        )
    options = dict(
        profile_dirs=profile_dirs,
        gpus=gpus,
        hardware=hardware,
        cuda_graphs=cuda_graphs,
        max_model_len=max_model_len,
        host=host,
        port=port,
        extra_args=tuple(extra_args),
        warmup=warmup,
        node_options=node_options,
    )
    profile, plan = plan_from_options(profile_name, **options)
    if dry_run:
        render_plan(plan, as_json)
        ensure_fits(plan)
        return plan, None
    require_vllm(profile.serve.min_vllm_version, installed_vllm_version(), profile.name)  # before downloads
    ensure_fits(plan)
    path = fetch_weights(profile, allow_download=allow_download, progress=progress)
    if str(path) != plan.model:  # plan again with the local directory vLLM will load
        profile, plan = plan_from_options(profile_name, model_location=str(path), **options)
        ensure_fits(plan)
    ensure_dirs(plan.env)  # the JIT caches outlive the run: later starts load instead of compiling
    env = dict(plan.env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: vLLM must not reach for the hub
    before = ()
    if plan.device == "cuda":
        before = tuple((g.uuid or str(g.index), g.memory_used) for g in plan.gpus)
    register_secrets(secret_values(plan.env, plan.args))  # masked in the log lines shown and in errors
    spec = LaunchSpec(
        argv=(sys.executable, *VLLM_MAIN, *plan.args),
        # where vLLM listens: the plan's (an --host/--port after `--` was folded into it)
        host=_arg_value(plan.args, "--host") or host,
        port=int(_arg_value(plan.args, "--port") or port),
        served_model_name=_arg_value(plan.args, "--served-model-name") or profile.name,
        startup_timeout_s=startup_timeout(
            profile.serve.startup_timeout_s, profile.model.weights_bytes, timeout
        ),
        env=env,
        log_path=log_path(profile.name),
        gpu_memory_before=before,
    )
    if len(plan.nodes) > 1 and node_options is not None:  # this node's own command (nodes/supervise.py)
        from dsv4serve.nodes.supervise import node_spec

        spec = node_spec(spec, plan, node_options.node_rank, VLLM_MAIN)
    return plan, spec


def _arg_value(args: Sequence[str], flag: str) -> str | None:
    """The value vLLM will use for FLAG: its last occurrence (args after `--` come last and win)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def _curl_line(base_url: str, model: str, keyed: bool = False) -> str:
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
    # A keyed server: the header names the variable, never the key itself.
    auth = ' -H "Authorization: Bearer $DSV4SERVE_API_KEY"' if keyed else ""
    json_header = "-H 'Content-Type: application/json'"
    return f"curl {base_url}/v1/chat/completions {json_header}{auth} -d {shlex.quote(body)}"


def chat_once(base_url: str, model: str, max_tokens: int = 32, api_key: str | None = None) -> dict:
    """One streamed chat completion through the openai client: reply, time to first token, tokens/s."""
    import httpx
    import openai

    http = httpx.Client(trust_env=False)  # local traffic only: ignore any HTTP(S)_PROXY
    client = openai.OpenAI(
        base_url=base_url + "/v1", api_key=api_key or "none", http_client=http, max_retries=0
    )
    t0 = time.monotonic()
    first = last = None
    parts: list[str] = []
    usage = None
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": SMOKE_PROMPT}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            # A random-weight model may pick end-of-sequence first; ask for a few tokens at least.
            extra_body={"min_tokens": 4},
            timeout=120,
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    last = time.monotonic()
                    first = first or last
                    parts.append(choice.delta.content)
    except openai.OpenAIError as err:
        from dsv4serve.errors import LaunchError

        raise LaunchError(f"the chat completion failed: {err}", "read the vLLM log above") from err
    finally:
        http.close()
    tokens = usage.completion_tokens if usage is not None else len(parts)
    decode_s = (last - first) if first is not None and last is not None else 0.0
    return {
        "reply": "".join(parts),
        "completion_tokens": tokens,
        "ttft_s": round(first - t0, 3) if first is not None else None,
        "request_s": round(time.monotonic() - t0, 3),
        # Decode rate: tokens after the first over the time after the first.
        "tokens_per_s": round((tokens - 1) / decode_s, 1) if tokens > 1 and decode_s > 0 else None,
    }


def register(app: typer.Typer) -> None:
    extra = {"allow_extra_args": True, "ignore_unknown_options": True}

    @app.command("up", context_settings=extra)
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
        nodes: NodesOpt = None,
        node_rank: NodeRankOpt = 0,
        master_addr: MasterAddrOpt = None,
        master_port: MasterPortOpt = DEFAULT_MASTER_PORT,
        strategy: StrategyOpt = None,
        executor: ExecutorOpt = "mp",
        profile_dir: ProfileDirOpt = None,
        detach: DetachOpt = False,
        name: NameOpt = None,
        verbose: VerboseOpt = False,
        api_key_file: ApiKeyFileOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Serve PROFILE with vLLM in the foreground until Ctrl-C (args after -- go to vLLM). Several
        nodes: the same command on each, with --nodes N, its own --node-rank and the head's --master-addr."""
        from dsv4serve.launch import run_server
        from dsv4serve.nodes.options import NodeOptions, check
        from dsv4serve.render import console, print_json
        from dsv4serve.service import keys

        given = NodeOptions(nodes, node_rank, master_addr, master_port, strategy, executor)
        node_options = check(given, starting=not dry_run)
        if detach and (nodes or 1) > 1:
            from dsv4serve.errors import UsageError

            raise UsageError("--detach serves one node; several nodes run `up` in the foreground", "drop -d")
        if detach and name is not None:
            from dsv4serve.service.state import check_name

            check_name(name)
        api_key = keys.read_api_key(api_key_file)

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
            node_options=node_options,
        )
        bound = _arg_value(plan.args, "--host") or host
        warning = None if node_rank > 0 else keys.exposure_warning(bound, api_key)
        if warning:
            sys.stderr.write(f"dsv4serve: {warning}\n")
        if spec is None:
            return
        spec = keys.with_key(spec, api_key)
        if detach:
            from dsv4serve.commands.service import up_detached

            up_detached(spec, plan, name, as_json)
            return

        def on_ready(server) -> None:
            from dsv4serve import sd_notify  # under systemd (export systemd: Type=notify): READY=1

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
            out.print(_curl_line(url, model, bool(api_key)), markup=False, crop=False, overflow="ignore")
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
        profile_dir: ProfileDirOpt = None,
        api_key_file: ApiKeyFileOpt = None,
        verbose: VerboseOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Start PROFILE, send one chat completion through the openai client, stop: CI's check."""
        from dsv4serve import procs
        from dsv4serve.errors import LaunchError
        from dsv4serve.launch import running_server
        from dsv4serve.render import console, print_json
        from dsv4serve.service import keys

        api_key = keys.read_api_key(api_key_file)
        _, spec = prepare_launch(
            profile,
            profile_dirs=profile_dir or (),
            gpus=gpus,
            port=port,
            timeout=timeout,
            progress=not as_json,
            warmup=warmup,
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
                result.update(chat_once(server.base_url, spec.served_model_name, api_key=api_key))
        except procs.Stopped as stop:
            raise typer.Exit(128 + stop.signum) from None
        left = procs.group_members(server.pgid)
        busy = procs.port_in_use(spec.host, spec.port)
        if left or busy:
            raise LaunchError(f"vLLM did not stop cleanly: processes left {left}, {busy or 'port free'}")
        if not result["reply"].strip():
            raise LaunchError("the chat completion returned an empty reply", f"read the log: {spec.log_path}")
        result.update(stopped_cleanly=True, pid=server.pgid, log=str(spec.log_path))
        if as_json:
            print_json(result)
            return
        out = console()
        out.print(f"smoke {profile}: ok", markup=False)
        out.print(f"  time to ready      {result['ready_s']:.1f} s", markup=False)
        out.print(f"  time to 1st token  {result['ttft_s']:.3f} s", markup=False)
        tps = result["tokens_per_s"]
        out.print(f"  tokens/s (decode)  {tps if tps is not None else '-'}", markup=False)
        out.print(f"  reply ({result['completion_tokens']} tokens): {result['reply']!r}", markup=False)
