"""From a profile and the user's options to a LaunchSpec: plan, make the weights local, fix the argv,
environment, log file and readiness deadline of one vLLM server (or one node's part of it)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT
from dsv4serve.serving.launch_args import arg_value, log_path
from dsv4serve.serving.spec import LaunchSpec


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
    traffic_warmup: bool | None = None,
    engine_options=None,
    spec: str | None = None,
    spec_tokens: int | None = None,
):
    """Plan (the planner's argv), make the weights local, and build the LaunchSpec: (plan, spec|None).
    node_options (nodes.options.NodeOptions): the spec is that node's (a worker's: headless).
    traffic_warmup: the rounds of serving/warm.py before ready; None: on for DeepSeek-V4 on GPUs.
    engine_options (preflight.engine_choice.EngineOptions): --engine, --quant, --ram, --thinking.
    spec, spec_tokens: speculative decoding (--spec off|mtp|dspark, --spec-tokens K), planned."""
    from dsv4serve.engines.base import get_engine
    from dsv4serve.preflight.engine_choice import plan_for_engine
    from dsv4serve.preflight.options import ensure_fits, plan_from_options
    from dsv4serve.preflight.render import render_plan
    from dsv4serve.redact import register as register_secrets
    from dsv4serve.redact import secret_values
    from dsv4serve.serving.ready import startup_timeout
    from dsv4serve.serving.spec import LaunchSpec
    from dsv4serve.weights.fetch import fetch_weights

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
    if spec is not None or spec_tokens is not None:  # vLLM's: a draft the plan counts
        options.update(spec=spec, spec_tokens=spec_tokens)
    profile, plan = plan_for_engine(profile_name, engine_options, starting=not dry_run, **options)
    if dry_run:
        render_plan(plan, as_json)
        ensure_fits(plan)
        return plan, None
    if plan.engine != "vllm":  # llama.cpp, Transformers: their weights and launch (prepare_engines.py)
        from dsv4serve.serving.prepare_engines import prepare_other

        return prepare_other(
            profile_name, profile, plan, engine_options, options, timeout, allow_download, progress
        )
    engine = get_engine(plan.engine)
    engine.require_version(
        profile.serve.min_vllm_version, engine.installed_version(), profile.name
    )  # before downloads
    announce_changes(plan, as_json)
    exact = profile.model.weights_exact
    if exact:
        ensure_fits(plan)
    sized: dict[str, int] = {}  # the real weights of a profile that carries a stand-in

    def replan(weights: int) -> None:
        """A stand-in's plan again with the real size: fit or refuse before the first byte."""
        sized["weights_bytes"] = weights
        ensure_fits(plan_from_options(profile_name, weights_bytes=weights, **options)[1])

    path = fetch_weights(
        profile, allow_download=allow_download, progress=progress, before_download=None if exact else replan
    )
    if not exact and "weights_bytes" not in sized:  # already on disk: the files' own sizes
        sized["weights_bytes"] = local_weights_bytes(path)
    if str(path) != plan.model or sized:  # plan again with the local directory vLLM will load
        profile, plan = plan_from_options(profile_name, model_location=str(path), **sized, **options)
        ensure_fits(plan)
    engine.prepare(plan.env)  # the JIT caches outlive the run: later starts load instead of compiling
    env = dict(plan.env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: vLLM must not reach for the hub
    before = ()
    if plan.device == "cuda":
        before = tuple((g.uuid or str(g.index), g.memory_used) for g in plan.gpus)
    register_secrets(secret_values(plan.env, plan.args))  # masked in the log lines shown and in errors
    spec = LaunchSpec(
        argv=engine.launch_argv(plan.args),
        # where vLLM listens: the plan's (an --host/--port after `--` was folded into it)
        host=arg_value(plan.args, "--host") or host,
        port=int(arg_value(plan.args, "--port") or port),
        served_model_name=arg_value(plan.args, "--served-model-name") or profile.name,
        startup_timeout_s=startup_timeout(
            profile.serve.startup_timeout_s, profile.model.weights_bytes, timeout
        ),
        env=env,
        log_path=log_path(profile.name),
        gpu_memory_before=before,
        engine=engine.name,
        warm_rounds=warm_rounds(profile, plan, traffic_warmup),
    )
    if len(plan.nodes) > 1 and node_options is not None:  # this node's own command (nodes/supervise.py)
        spec = node_spec(spec, plan, node_options.node_rank, engine.main)
    return plan, spec


def announce_changes(plan, as_json: bool) -> None:
    """`up` shows no plan: the once-only note that a profile's checkpoint changed goes to stderr."""
    from dsv4serve.render import note

    for text in plan.notes:
        if " now serves " in text and "(said once)" in text and not as_json:
            note(text)


def local_weights_bytes(path) -> int:
    """Bytes of the *.safetensors files of a local checkpoint (what vLLM will load)."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors") if f.is_file())


def node_spec(spec: LaunchSpec, plan, rank: int, main: tuple[str, ...]) -> LaunchSpec:
    """The launch of node `rank`: its own vLLM args and env (a worker's headless)."""
    node = plan.nodes[rank]
    env = {**dict(spec.env), **dict(node.env)}
    argv = (sys.executable, *main, *node.argv[2:])
    return dataclasses.replace(spec, argv=argv, env=env, headless=rank > 0)


def warm_rounds(profile, plan, wanted: bool | None) -> tuple[int, ...]:
    """The traffic warm-up's rounds: DeepSeek-V4 on GPUs compiles kernels per new request shape, so a
    server is warmed at 1, 8 and 64 concurrent requests before ready (--no-traffic-warmup: none)."""
    from dsv4serve.serving.warm import DEFAULT_ROUNDS

    if wanted is None:
        wanted = plan.device == "cuda" and profile.model.kv_cache is not None
    return DEFAULT_ROUNDS if wanted else ()
