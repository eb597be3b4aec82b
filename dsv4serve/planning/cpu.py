"""The CPU path of the planner (vLLM's CPU build, the tiny profile): host RAM instead of GPU memory."""

from __future__ import annotations

import math

from dsv4serve.engines.vllm.argv import vllm_args
from dsv4serve.hardware.inventory import GiB, gib
from dsv4serve.planning.memory import CPU_BASE_BYTES, CPU_PER_RANK_BYTES, kv_need_bytes
from dsv4serve.planning.types import MemoryRow, Overrides, Plan
from dsv4serve.profiles.types import Profile


def plan_cpu(
    profile: Profile, model: str, requested: int, overrides: Overrides, host_memory: int, host_cpus: int
) -> Plan:
    """The plan on the vLLM CPU build: one host, TP ranks as processes, KV cache space in whole GiB."""
    tp = overrides.tensor_parallel_size or 1
    problems = []
    heads = profile.model.attention_heads
    if heads > 0 and heads % tp:
        problems.append(f"tensor parallel size {tp} does not divide the {heads} attention heads")
    if host_cpus and tp > host_cpus:
        problems.append(f"tensor parallel size {tp} needs {tp} CPUs; {host_cpus} usable")
    kv = kv_need_bytes(profile, requested, tp, profile.serve.max_num_batched_tokens)
    # VLLM_CPU_KVCACHE_SPACE is whole GiB; without it vLLM's CPU build claims most of the RAM.
    kv_space_gib = max(1, math.ceil(kv / GiB))
    weights = math.ceil(profile.model.weights_bytes / tp)
    overhead = CPU_BASE_BYTES + CPU_PER_RANK_BYTES * tp
    total = (weights + kv_space_gib * GiB) * tp + overhead
    if host_memory and total > host_memory:
        problems.append(f"needs {gib(total)} of RAM; the host has {gib(host_memory)}")
    env = {**dict(overrides.jit_cache_env), **dict(profile.serve.env)}  # the CPU build compiles too
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_space_gib)
    if tp > 1:
        # vLLM's CPU build binds one OpenMP thread group per rank (else "Not enough allowed NUMA nodes").
        per_rank = max(1, host_cpus // tp) if host_cpus else 1
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
            str(r * per_rank) if per_rank == 1 else f"{r * per_rank}-{(r + 1) * per_rank - 1}"
            for r in range(tp)
        )
    row = MemoryRow("cpu", "host RAM", weights * tp, kv_space_gib * GiB * tp, overhead, total, host_memory, 0)
    return Plan(
        profile=profile.name,
        device="cpu",
        fits=not problems,
        tensor_parallel_size=tp,
        max_model_len=requested,
        gpu_memory_utilization=profile.serve.gpu_memory_utilization,
        cuda_graphs=False,
        model=model,
        gpus=(),
        memory=(row,),
        args=vllm_args(profile, model, overrides, tp, requested, False, None),
        env=tuple(env.items()),
        verdict="fits on the CPU" if not problems else problems[0],
        problems=tuple(problems),
        notes=(f"CPU path (vLLM CPU build): KV cache space {kv_space_gib} GiB via VLLM_CPU_KVCACHE_SPACE",),
    )
