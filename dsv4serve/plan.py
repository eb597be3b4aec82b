"""The planner (pure: no I/O, no environment, no clock): TP size, max length, memory budget, vLLM argv/env."""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field

from dsv4serve.errors import HardwareError, UsageError
from dsv4serve.hardware import GPU_CATALOG, GiB, Gpu, MiB
from dsv4serve.profile_types import Profile

# Per-GPU memory vLLM needs besides weights and KV cache. vLLM's budget per GPU is
# gpu_memory_utilization x total memory (vllm/v1/worker/utils.py request_memory), and the KV cache gets
# what is left after weights, non-torch memory, peak activations, CUDA graphs and a 150 MiB buffer
# (gpu_worker.py). These figures are deliberately on the safe side for the DeepSeek-V4 MoE models;
# the facts note that newer vLLM releases need ~4 GiB more per GPU than older ones.
NON_TORCH_BYTES = 1 * GiB  # CUDA context, cuBLAS/NCCL workspaces, custom all-reduce buffers
ACTIVATION_BYTES = 4 * GiB  # peak activations of vLLM's profiling run (max_num_batched_tokens)
VLLM_BUFFER_BYTES = 150 * MiB  # vLLM's own redundancy buffer against profiling underestimates
CUDA_GRAPH_BYTES = 3 * GiB  # captured CUDA graphs' private pools, only when eager mode is off
# Memory NVML shows beyond vLLM's budget, measured on H200 with vLLM 0.26.0 (docs/validation.md): vLLM
# fills its KV cache up to utilization x total, and each GPU then also holds 652 MiB more at TP 1 (CUDA
# context) and 2170-2212 MiB more at TP 2 and 4 (NCCL and custom all-reduce buffers on top).
CUDA_CONTEXT_BYTES = 652 * MiB
TP_COMM_BYTES = 1540 * MiB
# CPU path (recipes/vllm-cpu.md: ~2.8 GiB RSS over 3 processes at TP 1, ~4.1 GiB at TP 2).
CPU_BASE_BYTES = 3 * GiB // 2
CPU_PER_RANK_BYTES = 3 * GiB // 2
MIN_CONTEXT = 4096  # below this a chat model is not useful: refuse rather than lower further
MAX_SUGGESTED_GPUS = 64
DEFAULT_BLOCK_SIZE = 16  # vLLM's default --block-size on CUDA

# MLA-style latent KV cache and tensor parallelism: vLLM gives an MLA model a single KV head
# (ModelConfig.get_num_kv_heads returns 1 when use_mla; other models get heads // tp) and every TP rank
# keeps the whole latent cache, so the per-GPU KV cache is NOT divided by the TP size. DeepSeek-V4's
# CSA/HCA compressed caches follow the same scheme. Measured on H200 (docs/validation.md): with the same
# budget per GPU vLLM reported 19.26M, 19.40M and 19.44M KV tokens per GPU at TP 1, 2 and 4, i.e.
# 2,304 B/token on every rank: the cache is replicated, not split.
KV_CACHE_SPLIT_ACROSS_TP = False


def kv_cache_bytes_per_gpu(kv_bytes_per_token: int, tokens: int, tensor_parallel_size: int) -> int:
    """KV cache one GPU holds for `tokens` tokens of context (see KV_CACHE_SPLIT_ACROSS_TP)."""
    total = kv_bytes_per_token * tokens
    return math.ceil(total / tensor_parallel_size) if KV_CACHE_SPLIT_ACROSS_TP else total


def outside_budget_bytes(tensor_parallel_size: int) -> int:
    """Per-GPU memory a running server holds beyond vLLM's own budget (measured; see CUDA_CONTEXT_BYTES)."""
    return CUDA_CONTEXT_BYTES + (TP_COMM_BYTES if tensor_parallel_size > 1 else 0)


def overhead_bytes(cuda_graphs: bool) -> int:
    """Fixed per-GPU memory besides weights and KV cache."""
    fixed = NON_TORCH_BYTES + ACTIVATION_BYTES + VLLM_BUFFER_BYTES
    return fixed + (CUDA_GRAPH_BYTES if cuda_graphs else 0)


@dataclass(frozen=True)
class Overrides:
    """What the command line changes in a profile's plan."""

    model_location: str | None = None  # local path or hub repo id; default: profile.model.repo / path
    max_model_len: int | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    cuda_graphs: bool | None = None  # None = the profile's serve.enforce_eager
    tensor_parallel_size: int | None = None  # None = chosen by the planner
    extra_args: tuple[str, ...] = ()  # appended verbatim, last
    device: str | None = None  # "cuda" | "cpu"; None = cuda when GPUs are given, else cpu


@dataclass(frozen=True)
class MemoryRow:
    """The memory budget of one device (a GPU, or the host on the CPU path), in bytes."""

    device: str  # "0", "1", ... (GPU index) or "cpu"
    name: str
    weights: int
    kv_cache: int
    overhead: int
    total: int
    budget: (
        int  # what vLLM may use: utilization x CUDA's total memory (host RAM on the CPU path; 0 = unknown)
    )
    free: int
    # What NVML should show as used by the server on this GPU once it runs: vLLM fills the KV cache up
    # to the budget, plus what it holds outside it (outside_budget_bytes). 0 on the CPU path.
    expected_used: int = 0
    # KV cache tokens this GPU can hold: budget - weights - overhead, over the bytes per token. A lower
    # bound: the overhead figure is on the safe side. 0 where unknown (CPU path, no KV facts).
    kv_capacity_tokens: int = 0


@dataclass(frozen=True)
class Plan:
    profile: str
    device: str  # "cuda" | "cpu"
    fits: bool
    tensor_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float
    cuda_graphs: bool
    model: str  # what vLLM loads: local path or hub repo id
    gpus: tuple[Gpu, ...]  # the GPUs the server will use
    memory: tuple[MemoryRow, ...]
    args: tuple[str, ...]  # vLLM args after `serve`, MODEL first
    env: tuple[tuple[str, str], ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()  # layouts that would fit, e.g. "8xH200"
    verdict: str = ""  # one line: "fits on 2x H200", or the main reason it does not


def default_model_location(profile: Profile) -> str | None:
    return profile.model.repo or profile.model.path


def command(plan: Plan) -> tuple[str, ...]:
    """The command a user would type: `vllm serve MODEL ...`."""
    return ("vllm", "serve", *plan.args)


def shell_line(plan: Plan) -> str:
    """One pasteable line: environment assignments, then the vLLM command."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env)
    return f"{env} {shlex.join(command(plan))}".strip()


def plan_to_dict(plan: Plan) -> dict:
    data = asdict(plan)
    data["gpus"] = [{**asdict(g), "processes": [p._asdict() for p in g.processes]} for g in plan.gpus]
    data["argv"] = list(command(plan))
    data["env"] = dict(plan.env)
    for key in ("args", "problems", "notes", "suggestions"):
        data[key] = list(data[key])
    return data


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


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
        return _plan_cpu(profile, model, requested, overrides, host_memory, host_cpus)
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
    candidates, layout_problems, layout_notes = _tp_candidates(profile, gpus, overrides.tensor_parallel_size)
    best: _Fit | None = None
    for tp in candidates:
        chosen = tuple(
            sorted(sorted(gpus, key=lambda g: (-g.memory_free, g.index))[:tp], key=lambda g: g.index)
        )
        fit = _fit_memory(profile, chosen, tp, requested, overhead)
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
            f"size ({profile.serve.block_size or DEFAULT_BLOCK_SIZE}) whose KV cache fits next to the weights"
        )
    suggestions = () if not problems else _what_would_fit(profile, requested, overhead)
    where = f"{len(gpus)}x {gpus[0].name}"
    verdict = f"fits on {where}" if not problems else problems[0]
    if suggestions and best.problems:
        verdict = (
            f"{profile.name} needs more memory than {where} gives: it would fit on {_or_list(suggestions)}"
        )
        problems.insert(0, verdict)
    env = dict(profile.serve.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid or str(g.index) for g in best.gpus)
    args = _vllm_args(profile, model, overrides, best.tp, best.max_len, graphs, best.utilization)
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
    )


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
    held = "; ".join(
        f"GPU {g.index} has {_gib(g.memory_usable - g.memory_free)} in use"
        + (" by " + ", ".join(f"pid {p.pid} {p.name}".strip() for p in g.processes) if g.processes else "")
        for g in short
    )
    if lowered <= 0:
        return wanted, [], [f"no free memory: {held}"]
    note = (
        f"{held}: gpu_memory_utilization lowered from {wanted:g} to {lowered:g}, as vLLM refuses to start "
        "when free memory is below utilization x total"
    )
    return lowered, [note], []


def _fit_memory(profile: Profile, gpus: tuple[Gpu, ...], tp: int, requested: int, overhead: int) -> _Fit:
    util, notes, problems = _utilization(profile, gpus, tp)
    block = profile.serve.block_size or DEFAULT_BLOCK_SIZE
    weights = math.ceil(profile.model.weights_bytes / tp)
    budgets = {g.index: math.ceil(util * g.memory_usable) for g in gpus}
    room = min(budgets.values()) - weights - overhead
    per_token = kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, 1, tp)
    fit_len = requested if per_token <= 0 else max(room, 0) // per_token // block * block
    minimum = min(requested, _round_up(MIN_CONTEXT, block))
    max_len = requested
    if fit_len < requested:
        if fit_len >= minimum:
            max_len = fit_len
        elif room <= 0:
            problems.append(
                f"the weights alone need {_gib(weights)} per GPU at TP {tp}, plus {_gib(overhead)} overhead, "
                f"over the {_gib(min(budgets.values()))} budget ({util:g} x {_gib(gpus[0].memory_usable)})"
            )
        else:
            need = kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, minimum, tp)
            problems.append(
                f"the KV cache for {minimum} tokens needs {_gib(need)} per GPU; {_gib(room)} is left after "
                f"weights and overhead"
                + (
                    f" (a context of {fit_len} tokens would fit: --max-model-len {fit_len})"
                    if fit_len
                    else ""
                )
            )
    kv = kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, max_len, tp)
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
            kv_capacity_tokens=max(budgets[g.index] - weights - overhead, 0) // per_token if per_token > 0 else 0,
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


def _what_would_fit(profile: Profile, requested: int, overhead: int) -> tuple[str, ...]:
    """Catalog GPUs (of a new enough compute capability) and the fewest of each that hold this model."""
    found = []
    util = profile.serve.gpu_memory_utilization
    block = profile.serve.block_size or DEFAULT_BLOCK_SIZE
    tokens = min(requested, _round_up(MIN_CONTEXT, block))
    for gpu in GPU_CATALOG:
        if _cc(gpu.compute_capability) < _cc(profile.model.min_compute_capability):
            continue
        for tp in reversed(_divisors(profile.model.attention_heads, MAX_SUGGESTED_GPUS)):
            need = (
                math.ceil(profile.model.weights_bytes / tp)
                + kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, tokens, tp)
                + overhead
            )
            if need <= math.ceil(util * (gpu.memory_total - gpu.memory_reserved)):
                found.append((tp, gpu.memory_total, f"{tp}x{gpu.name}"))
                break
    return tuple(label for _, _, label in sorted(found))


def _or_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _vllm_args(
    profile: Profile,
    model: str,
    overrides: Overrides,
    tp: int,
    max_len: int,
    graphs: bool,
    util: float | None,
) -> tuple[str, ...]:
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
    return tuple(args) + tuple(serve.extra_args) + tuple(overrides.extra_args)


def _plan_cpu(
    profile: Profile, model: str, requested: int, overrides: Overrides, host_memory: int, host_cpus: int
) -> Plan:
    tp = overrides.tensor_parallel_size or 1
    problems = []
    heads = profile.model.attention_heads
    if heads > 0 and heads % tp:
        problems.append(f"tensor parallel size {tp} does not divide the {heads} attention heads")
    if host_cpus and tp > host_cpus:
        problems.append(f"tensor parallel size {tp} needs {tp} CPUs; {host_cpus} usable")
    kv = kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, requested, tp)
    # VLLM_CPU_KVCACHE_SPACE is whole GiB; without it vLLM's CPU build claims most of the RAM.
    kv_space_gib = max(1, math.ceil(kv / GiB))
    weights = math.ceil(profile.model.weights_bytes / tp)
    overhead = CPU_BASE_BYTES + CPU_PER_RANK_BYTES * tp
    total = (weights + kv_space_gib * GiB) * tp + overhead
    if host_memory and total > host_memory:
        problems.append(f"needs {_gib(total)} of RAM; the host has {_gib(host_memory)}")
    env = dict(profile.serve.env)
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
        args=_vllm_args(profile, model, overrides, tp, requested, False, None),
        env=tuple(env.items()),
        verdict="fits on the CPU" if not problems else problems[0],
        problems=tuple(problems),
        notes=(f"CPU path (vLLM CPU build): KV cache space {kv_space_gib} GiB via VLLM_CPU_KVCACHE_SPACE",),
    )
