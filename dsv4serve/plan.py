"""The planner (pure: no I/O, no environment, no clock): TP size, max length, memory budget per GPU.

The pieces live next door and are re-exported here, so `dsv4serve.plan` stays the one import:
plan_types (Overrides, MemoryRow, Plan), memory_model (vLLM's per-GPU memory figures), vllm_args (the
argv, `command`, `shell_line`) and plan_cpu (the CPU path). This module plans the GPU path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from dsv4serve.errors import HardwareError, UsageError
from dsv4serve.hardware import GPU_CATALOG, GiB, Gpu, MiB, gib, gpu_to_dict
from dsv4serve.jit_cache import startup_env
from dsv4serve.memory_model import (
    ACTIVATION_BYTES,
    CPU_BASE_BYTES,
    CPU_PER_RANK_BYTES,
    CUDA_CONTEXT_BYTES,
    CUDA_GRAPH_BYTES,
    DEFAULT_BLOCK_SIZE,
    KV_CACHE_SPLIT_ACROSS_TP,
    MIN_CONTEXT,
    NON_TORCH_BYTES,
    TP_COMM_BYTES,
    VLLM_BUFFER_BYTES,
    kv_block_size,
    kv_cache_bytes_per_gpu,
    kv_capacity,
    kv_fit_len,
    kv_need_bytes,
    kv_summary,
    outside_budget_bytes,
    overhead_bytes,
)
from dsv4serve.plan_cpu import plan_cpu
from dsv4serve.plan_types import MemoryRow, Overrides, Plan
from dsv4serve.profile_types import Profile
from dsv4serve.vllm_args import command, shell_line, vllm_args

__all__ = [
    "ACTIVATION_BYTES",
    "CPU_BASE_BYTES",
    "CPU_PER_RANK_BYTES",
    "CUDA_CONTEXT_BYTES",
    "CUDA_GRAPH_BYTES",
    "DEFAULT_BLOCK_SIZE",
    "KV_CACHE_SPLIT_ACROSS_TP",
    "MAX_SUGGESTED_GPUS",
    "MIN_CONTEXT",
    "NON_TORCH_BYTES",
    "TP_COMM_BYTES",
    "VLLM_BUFFER_BYTES",
    "MemoryRow",
    "Overrides",
    "Plan",
    "command",
    "default_model_location",
    "kv_cache_bytes_per_gpu",
    "make_plan",
    "outside_budget_bytes",
    "overhead_bytes",
    "plan_to_dict",
    "shell_line",
]

MAX_SUGGESTED_GPUS = 64


def default_model_location(profile: Profile) -> str | None:
    return profile.model.repo or profile.model.path


def plan_to_dict(plan: Plan) -> dict:
    data = asdict(plan)
    data["gpus"] = [gpu_to_dict(g) for g in plan.gpus]
    data["argv"] = list(command(plan))
    data["env"] = dict(plan.env)
    for key in ("args", "problems", "notes", "suggestions"):
        data[key] = list(data[key])
    return data


def _cc(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


def _requested_len(profile: Profile, overrides: Overrides) -> int:
    max_context = profile.model.max_context
    if overrides.max_model_len is not None:
        if overrides.max_model_len < 1:
            raise UsageError(f"--max-model-len {overrides.max_model_len}: must be at least 1")
        if max_context and overrides.max_model_len > max_context:
            raise UsageError(
                f"--max-model-len {overrides.max_model_len} is above the model's context "
                f"({max_context} tokens)",
                f"use --max-model-len {max_context} or less",
            )
        return overrides.max_model_len
    wanted = profile.serve.max_model_len or max_context
    return min(wanted, max_context) if max_context else wanted


def make_plan(
    profile: Profile,
    gpus: tuple[Gpu, ...],
    overrides: Overrides | None = None,
    *,
    host_memory: int = 0,
    host_cpus: int = 0,
) -> Plan:
    """Decide how vLLM starts on these GPUs (or the CPU), and whether it fits."""
    overrides = overrides or Overrides()
    model = overrides.model_location or default_model_location(profile)
    if not model:
        raise UsageError(
            f"profile {profile.name!r} generates its checkpoint: the plan needs its local path",
            "pass the directory the weights step returned as the model location",
        )
    device = overrides.device or ("cuda" if gpus else "cpu")
    if device not in ("cuda", "cpu"):
        raise UsageError(f"unknown device {device!r}", "use cuda or cpu")
    requested = _requested_len(profile, overrides)
    if device == "cpu":
        if not profile.cpu_ok:
            raise HardwareError(
                f"profile {profile.name!r} needs NVIDIA GPUs (compute capability "
                f"{profile.model.min_compute_capability}+) and none are usable here",
                "plan for GPUs you do not have with --hardware 2xH200, or use a CPU profile: tiny",
            )
        return plan_cpu(profile, model, requested, overrides, host_memory, host_cpus)
    if not gpus:
        raise HardwareError(f"profile {profile.name!r}: no GPUs to plan for", "see `dsv4serve gpus`")
    return _plan_cuda(profile, model, requested, overrides, gpus)


@dataclass(frozen=True)
class _Fit:
    tp: int
    gpus: tuple[Gpu, ...]
    utilization: float
    max_len: int
    rows: tuple[MemoryRow, ...]
    problems: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


def _plan_cuda(profile: Profile, model: str, requested: int, overrides: Overrides, gpus) -> Plan:
    graphs = overrides.cuda_graphs if overrides.cuda_graphs is not None else not profile.serve.enforce_eager
    overhead = overhead_bytes(graphs)
    batched = _batched_tokens(profile, overrides)
    candidates, layout_problems, layout_notes = _tp_candidates(profile, gpus, overrides.tensor_parallel_size)
    best: _Fit | None = None
    for tp in candidates:
        chosen = tuple(
            sorted(sorted(gpus, key=lambda g: (-g.memory_free, g.index))[:tp], key=lambda g: g.index)
        )
        fit = _fit_memory(profile, chosen, tp, requested, overhead, batched)
        if not fit.problems and fit.max_len == requested:
            best = fit
            break
        if best is None or (not fit.problems and (best.problems or fit.max_len > best.max_len)):
            best = fit
    assert best is not None  # _tp_candidates always offers one
    problems = list(layout_problems) + list(best.problems) + _capability_problems(profile, best.gpus)
    notes = list(layout_notes) + list(best.notes)
    if len(best.gpus) < len(gpus):
        notes.append(f"using {len(best.gpus)} of the {len(gpus)} GPUs given (TP {best.tp})")
    if best.max_len < requested and not best.problems:
        notes.append(
            f"max_model_len lowered from {requested} to {best.max_len}: the largest multiple of the block "
            f"size ({kv_block_size(profile)}) whose KV cache fits next to the weights"
            + (" (vLLM's start-up check)" if profile.model.kv_cache else "")
        )
    suggestions = () if not problems else _what_would_fit(profile, requested, overhead, batched)
    where = f"{len(gpus)}x {gpus[0].name}"
    verdict = f"fits on {where}" if not problems else problems[0]
    if best.problems and overrides.tensor_parallel_size is not None and len(best.gpus) < len(gpus):
        # the forced TP size leaves GPUs unused: blame the TP size, not the memory of the GPUs given
        suggestions = ()
        verdict = (
            f"{profile.name} does not fit at TP {best.tp} (forced; {best.tp} of the {len(gpus)} GPUs given): "
            f"{best.problems[0]}; leave --tp out to let the planner choose, or raise it"
        )
        problems.insert(0, verdict)
    elif suggestions and best.problems:
        verdict = (
            f"{profile.name} needs more memory than {where} gives: it would fit on {_or_list(suggestions)}"
        )
        problems.insert(0, verdict)
    env = dict(profile.serve.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid or str(g.index) for g in best.gpus)
    env, warmup_notes = startup_env(
        env,
        overrides.deep_gemm_warmup or profile.serve.deep_gemm_warmup,
        overrides.jit_cache_env,
        uses_deep_gemm=profile.model.kv_cache is not None,  # V4's FP8 GEMMs run on DeepGEMM
    )
    notes += warmup_notes
    args = vllm_args(profile, model, overrides, best.tp, best.max_len, graphs, best.utilization)
    return Plan(
        profile=profile.name,
        device="cuda",
        fits=not problems,
        tensor_parallel_size=best.tp,
        max_model_len=best.max_len,
        gpu_memory_utilization=best.utilization,
        cuda_graphs=graphs,
        model=model,
        gpus=best.gpus,
        memory=best.rows,
        args=args,
        env=tuple(env.items()),
        verdict=verdict,
        problems=tuple(problems),
        notes=tuple(notes),
        suggestions=suggestions,
        kv=kv_summary(profile, best.max_len, best.tp, batched),
    )


def _batched_tokens(profile: Profile, overrides: Overrides) -> int | None:
    """--max-num-batched-tokens as vLLM will see it (the last one in the args wins), else the profile's."""
    value = profile.serve.max_num_batched_tokens
    args = (*profile.serve.extra_args, *overrides.extra_args)
    for i, arg in enumerate(args):
        if arg.startswith("--max-num-batched-tokens="):
            text = arg.split("=", 1)[1]
        elif arg == "--max-num-batched-tokens" and i + 1 < len(args):
            text = args[i + 1]
        else:
            continue
        if not text.isdigit() or int(text) < 1:
            raise UsageError(f"--max-num-batched-tokens {text}: expected a positive whole number")
        value = int(text)
    return value


def _divisors(heads: int, limit: int) -> list[int]:
    """TP sizes vLLM accepts (attention heads split evenly), largest first, at most `limit`."""
    return [tp for tp in range(limit, 0, -1) if heads <= 0 or heads % tp == 0]


def _tp_candidates(profile: Profile, gpus, forced: int | None) -> tuple[list[int], list[str], list[str]]:
    """TP sizes to try, best first; plus problems/notes about the layout itself.

    The profile's hardware rules are its known-good layouts: when some match (enough GPUs, enough memory
    each) their TP sizes are tried, largest GPU count first. When none matches, the largest divisor of the
    attention heads is used and the memory model and compute capability alone decide the verdict."""
    heads, count = profile.model.attention_heads, len(gpus)
    fallback = _divisors(heads, count)[:1] or [1]
    if forced is not None:
        problems = []
        if forced < 1 or forced > count:
            problems.append(f"tensor parallel size {forced} needs {forced} GPUs; {count} given")
        elif heads > 0 and heads % forced:
            problems.append(f"tensor parallel size {forced} does not divide the {heads} attention heads")
        return ([min(max(forced, 1), count)] if not problems else fallback), problems, []
    rules = profile.hardware
    if not rules:
        return _divisors(heads, count)[:1] or [1], [], []
    smallest = min(g.memory_total for g in gpus) / GiB
    matching = sorted(
        (r for r in rules if r.tensor_parallel_size <= count and smallest >= r.min_vram_gib),
        key=lambda r: -r.gpus,
    )
    tps = list(
        dict.fromkeys(
            r.tensor_parallel_size for r in matching if heads <= 0 or heads % r.tensor_parallel_size == 0
        )
    )
    if tps:
        return tps, [], []
    supported = "; ".join(
        f"{r.gpus} GPUs of >= {r.min_vram_gib:g} GiB (TP {r.tensor_parallel_size})" for r in rules
    )
    return (
        fallback,
        [],
        [
            f"none of profile {profile.name!r}'s layouts matches {count}x {gpus[0].name} "
            f"({smallest:.1f} GiB each): {supported}; the memory model alone decides (TP {fallback[0]})"
        ],
    )


def _utilization(profile: Profile, gpus: tuple[Gpu, ...], tp: int) -> tuple[float, list[str], list[str]]:
    """vLLM refuses to start when free memory < utilization x total: lower it to what is free, and say so.

    The server also needs outside_budget_bytes(tp) beyond its budget, so that much must be free too."""
    wanted = profile.serve.gpu_memory_utilization
    extra = outside_budget_bytes(tp)
    short = [g for g in gpus if g.memory_free < math.ceil(wanted * g.memory_usable) + extra]
    if not short:
        return wanted, [], []
    lowered = math.floor(min((g.memory_free - extra) / g.memory_usable for g in gpus) * 100) / 100
    held = "; ".join(_short_reason(g, wanted, extra) for g in short)
    if lowered <= 0:
        return wanted, [], [f"no free memory: {held}"]
    note = (
        f"{held}: gpu_memory_utilization lowered from {wanted:g} to {lowered:g}, as vLLM refuses to start "
        "when free memory is below utilization x total"
    )
    return lowered, [note], []


def _short_reason(g: Gpu, wanted: float, extra: int) -> str:
    """Why a GPU cannot give vLLM its budget: memory in use, or (idle) too little room beside it."""
    used = g.memory_usable - g.memory_free
    if used < MiB and not g.processes:
        beside = g.memory_usable - math.ceil(wanted * g.memory_usable)
        return (
            f"GPU {g.index} is idle, but the {gib(beside)} beside a {wanted:g} budget is less than the "
            f"{gib(extra)} vLLM needs there (CUDA context; NCCL at TP > 1)"
        )
    by = ", ".join(f"pid {p.pid} {p.name}".strip() for p in g.processes)
    return f"GPU {g.index} has {gib(used)} in use" + (f" by {by}" if by else "")


def _fit_memory(
    profile: Profile, gpus: tuple[Gpu, ...], tp: int, requested: int, overhead: int, batched: int | None
) -> _Fit:
    """The longest max_model_len (up to `requested`) whose KV start-up need fits next to the weights."""
    util, notes, problems = _utilization(profile, gpus, tp)
    block = kv_block_size(profile)
    weights = math.ceil(profile.model.weights_bytes / tp)
    budgets = {g.index: math.ceil(util * g.memory_usable) for g in gpus}
    room = min(budgets.values()) - weights - overhead
    fit_len = kv_fit_len(profile, room, requested, tp, batched)
    minimum = min(requested, _round_up(MIN_CONTEXT, block))
    max_len = requested
    if fit_len < requested:
        if fit_len >= minimum:
            max_len = fit_len
        elif room <= 0:
            problems.append(
                f"the weights alone need {gib(weights)} per GPU at TP {tp}, plus {gib(overhead)} overhead, "
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
    capacity = {
        g.index: kv_capacity(profile, budgets[g.index] - weights - overhead, max_len, tp) for g in gpus
    }
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
            expected_used=budgets[g.index] + outside_budget_bytes(tp),
            kv_capacity_tokens=capacity[g.index][0],
            kv_capacity_seqs=capacity[g.index][1],
        )
        for g in gpus
    )
    return _Fit(tp, gpus, util, max_len, rows, tuple(problems), tuple(notes))


def _capability_problems(profile: Profile, gpus: tuple[Gpu, ...]) -> list[str]:
    need = profile.model.min_compute_capability
    return [
        f"{name} has compute capability {cc}, below the {need} that {profile.name} needs"
        for name, cc in dict.fromkeys((g.name, g.compute_capability) for g in gpus)
        if _cc(cc) < _cc(need)
    ]


def _what_would_fit(profile: Profile, requested: int, overhead: int, batched: int | None) -> tuple[str, ...]:
    """Catalog GPUs (of a new enough compute capability) and the fewest of each that hold this model."""
    found = []
    util = profile.serve.gpu_memory_utilization
    tokens = min(requested, _round_up(MIN_CONTEXT, kv_block_size(profile)))
    for gpu in GPU_CATALOG:
        if _cc(gpu.compute_capability) < _cc(profile.model.min_compute_capability):
            continue
        for tp in reversed(_divisors(profile.model.attention_heads, MAX_SUGGESTED_GPUS)):
            need = (
                math.ceil(profile.model.weights_bytes / tp)
                + kv_need_bytes(profile, tokens, tp, batched)
                + overhead
            )
            if need <= math.ceil(util * (gpu.memory_total - gpu.memory_reserved)):
                found.append((tp, gpu.memory_total, f"{tp}x{gpu.name}"))
                break
    return tuple(label for _, _, label in sorted(found))


def _or_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
