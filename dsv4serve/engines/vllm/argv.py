"""The vLLM command line of a plan: argv after `vllm serve`, and the pasteable shell line.

The engine sits below profiles and planning: it reads a profile (profiles.types.Profile), the overrides
and a plan (planning.types) by their fields, without importing those layers."""

from __future__ import annotations

import shlex
from typing import Any


def vllm_args(
    profile: Any,
    model: str,
    overrides: Any,
    tp: int,
    max_len: int,
    graphs: bool,
    util: float | None,
) -> tuple[str, ...]:
    """vLLM's args after `serve`: MODEL first, then the profile's settings, its extra args, the user's."""
    serve = profile.serve
    args = [model, "--served-model-name", serve.served_model_name or profile.name]
    args += ["--host", overrides.host, "--port", str(overrides.port)]
    args += ["--tensor-parallel-size", str(tp), "--max-model-len", str(max_len)]
    if util is not None:
        args += ["--gpu-memory-utilization", f"{util:g}"]
    if not graphs:
        args.append("--enforce-eager")
    if profile.model.repo and model == profile.model.repo and profile.model.revision:
        args += ["--revision", profile.model.revision]
    if serve.trust_remote_code:
        args.append("--trust-remote-code")
    for flag, value in (
        ("--dtype", serve.dtype),
        ("--kv-cache-dtype", serve.kv_cache_dtype),
        ("--block-size", serve.block_size),
        ("--max-num-batched-tokens", serve.max_num_batched_tokens),  # the planner sizes the KV check with it
        ("--tokenizer-mode", serve.tokenizer_mode),
        ("--reasoning-parser", serve.reasoning_parser),
        ("--tool-call-parser", serve.tool_call_parser),
    ):
        if value is not None:
            args += [flag, str(value)]
    if serve.enable_auto_tool_choice:
        args.append("--enable-auto-tool-choice")
    if serve.enable_expert_parallel:
        args.append("--enable-expert-parallel")
    if getattr(overrides, "speculative_config", ""):  # planned: the draft's weights and KV are counted
        args += ["--speculative-config", overrides.speculative_config]
    return tuple(args) + tuple(serve.extra_args) + tuple(overrides.extra_args)


def command(plan: Any) -> tuple[str, ...]:
    """The command a user would type: `vllm serve MODEL ...` (another engine's plan: its own program)."""
    from dsv4serve.engines.names import PROGRAMS

    return (*PROGRAMS[getattr(plan, "engine", "vllm")], *plan.args)


def shell_line(plan: Any) -> str:
    """One pasteable line: environment assignments, then the vLLM command."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env)
    return f"{env} {shlex.join(command(plan))}".strip()
