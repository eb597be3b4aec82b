"""How one layout fits the GPUs (pure): the utilization vLLM can get, the longest max_model_len whose KV
start-up need fits beside the weights and the overhead, the memory rows, and which catalog GPUs
would hold a model that does not fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dsv4serve.engines.vllm.releases import Release
from dsv4serve.hardware.inventory import GPU_CATALOG, Gpu, MiB, capability_key, gib
from dsv4serve.planning.memory import (
    MIN_CONTEXT,
    KvContext,
    Overhead,
    kv_block_size,
    kv_capacity,
    kv_fit_len,
    kv_need_bytes,
    outside_budget_bytes,
    overhead_for,
)
from dsv4serve.planning.strategy import Layout, kv_profile, weights_per_gpu
from dsv4serve.planning.strategy import divisors as _divisors
from dsv4serve.planning.types import MemoryRow
from dsv4serve.profiles.types import Profile

MAX_SUGGESTED_GPUS = 64


@dataclass(frozen=True)
class Fit:
    layout: Layout
    gpus: tuple[Gpu, ...]
    utilization: float
    max_len: int
    rows: tuple[MemoryRow, ...]
    problems: tuple[str, ...]
    overhead: Overhead
    notes: tuple[str, ...] = field(default=())


def utilization(profile: Profile, gpus: tuple[Gpu, ...], tp: int) -> tuple[float, list[str], list[str]]:
    """vLLM refuses to start when free memory < utilization x total: lower it to what is free, and say so.

    The server also needs outside_budget_bytes(tp) beyond its budget, so that much must be free too."""
    wanted = profile.serve.gpu_memory_utilization
    extra = outside_budget_bytes(tp, profile.model.kv_cache is not None)
    short = [g for g in gpus if g.memory_free < math.ceil(wanted * g.memory_usable) + extra]
    if not short:
        return wanted, [], []
    lowered = math.floor(min((g.memory_free - extra) / g.memory_usable for g in gpus) * 100) / 100
    held = "; ".join(short_reason(g, wanted, extra) for g in short)
    if lowered <= 0:
        return wanted, [], [f"no free memory: {held}"]
    note = (
        f"{held}: gpu_memory_utilization lowered from {wanted:g} to {lowered:g}, as vLLM refuses to start "
        "when free memory is below utilization x total"
    )
    return lowered, [note], []


def short_reason(g: Gpu, wanted: float, extra: int) -> str:
    """Why a GPU cannot give vLLM its budget: memory in use, or (idle) too little room beside it."""
    used = g.memory_usable - g.memory_free
    if used < MiB and not g.processes:
        beside = g.memory_usable - math.ceil(wanted * g.memory_usable)
        return (
            f"GPU {g.index} is idle, but the {gib(beside)} beside a {wanted:g} budget is less than the "
            f"{gib(extra)} vLLM needs there (CUDA context; NCCL at TP > 1; DeepSeek-V4's kernels)"
        )
    by = ", ".join(f"pid {p.pid} {p.name}".strip() for p in g.processes)
    return f"GPU {g.index} has {gib(used)} in use" + (f" by {by}" if by else "")


def staged_context(ctx: KvContext, layout: Layout) -> KvContext:
    """The context of a layout: its pipeline stages change the batches in flight."""
    return replace(ctx, pipeline_parallel_size=layout.pp)


def fit_memory(
    model: Profile, gpus: tuple[Gpu, ...], layout: Layout, requested: int, cost: Overhead, ctx: KvContext
) -> Fit:
    """The longest max_model_len (up to `requested`) whose KV start-up need fits next to the weights.
    The weights per GPU follow the layout's strategy, the KV cache its (largest) pipeline stage."""
    tp, world = layout.tp, layout.world
    overhead = cost.total
    util, notes, problems = utilization(model, gpus, world)
    batched = staged_context(ctx, layout)
    profile = kv_profile(model, layout, requested, batched)
    block = kv_block_size(profile)
    weights = weights_per_gpu(model, layout)
    budgets = {g.index: math.ceil(util * g.memory_usable) for g in gpus}
    room = min(budgets.values()) - weights - overhead
    fit_len = kv_fit_len(profile, room, requested, tp, batched)
    minimum = min(requested, round_up(MIN_CONTEXT, block))
    max_len = requested
    if fit_len < requested:
        if fit_len >= minimum:
            max_len = fit_len
        elif room <= 0:
            problems.append(
                f"the weights alone need {gib(weights)} per GPU at {layout.label}, plus {gib(overhead)} "
                "overhead, "
                f"over the {gib(min(budgets.values()))} budget ({util:g} x {gib(gpus[0].memory_usable)})"
            )
        else:
            need = kv_need_bytes(profile, minimum, tp, batched)
            problems.append(
                f"the KV cache for {minimum} tokens needs {gib(need)} per GPU; {gib(room)} is left after "
                f"weights and overhead"
                + (
                    f" (a context of {fit_len} tokens would fit: --max-model-len {fit_len})"
                    if fit_len
                    else ""
                )
            )
    kv = kv_need_bytes(profile, max_len, tp, batched)
    pools = {g.index: budgets[g.index] - weights - overhead for g in gpus}
    capacity = {i: kv_capacity(profile, pool, max_len, tp, batched) for i, pool in pools.items()}
    rows = tuple(
        MemoryRow(
            str(g.index),
            g.name,
            weights,
            kv,
            overhead,
            weights + kv + overhead,
            budgets[g.index],
            g.memory_free,
            expected_used=budgets[g.index] + outside_budget_bytes(world, model.model.kv_cache is not None),
            kv_capacity_tokens=capacity[g.index][0],
            kv_capacity_seqs=capacity[g.index][1],
            vllm_kv_tokens=capacity[g.index][2],
            vllm_max_concurrency=capacity[g.index][3],
        )
        for g in gpus
    )
    return Fit(layout, gpus, util, max_len, rows, tuple(problems), cost, tuple(notes))


def what_would_fit(
    profile: Profile, requested: int, graphs: bool, release: Release, ctx: KvContext
) -> tuple[str, ...]:
    """Catalog GPUs (of a new enough compute capability) and the fewest of each that hold this model."""
    found = []
    util = profile.serve.gpu_memory_utilization
    tokens = min(requested, round_up(MIN_CONTEXT, kv_block_size(profile)))
    for gpu in GPU_CATALOG:
        if capability_key(gpu.compute_capability) < capability_key(profile.model.min_compute_capability):
            continue
        for tp in reversed(_divisors(profile.model.attention_heads, MAX_SUGGESTED_GPUS)):
            usable = gpu.memory_total - gpu.memory_reserved
            on_it = replace(ctx, gpu_memory=usable, gpu_name=gpu.name)  # vLLM's default step there
            weights = math.ceil(profile.model.weights_bytes / tp)
            overhead = overhead_for(profile, graphs, on_it, tp, release).total
            need = weights + kv_need_bytes(profile, tokens, tp, on_it) + overhead
            if need <= math.ceil(util * usable):
                # more GPUs than one node holds: that many nodes (no plan puts 16 GPUs in one node)
                shape = f"{tp}x" if tp <= gpu.per_node else f"{tp // gpu.per_node}x{gpu.per_node}x"
                found.append((tp, gpu.memory_total, f"{shape}{gpu.name}"))
                break
    return tuple(label for _, _, label in sorted(found))


def round_up(value: int, block: int) -> int:
    return -(-value // block) * block
