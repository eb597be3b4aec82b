"""The llama.cpp planner (pure): which quant, what goes on the GPUs and what stays in RAM, the context.

- **Weights.** A GGUF quant's bytes (the profile's, or the hub's listing). DeepSeek-V4's GGUFs keep the
  non-expert tensors near Q8_0 (8.5 bits) and quantize the routed experts, so the dense part is the
  checkpoint's non-expert bytes x 8.5/8 and the rest is experts, spread evenly over the layers.
- **Offload.** `-ngl all` when the dense part, the KV cache and the compute buffers fit the GPUs; then
  `--n-cpu-moe K` keeps the routed experts of the first K layers in RAM, K as small as the GPUs allow.
  Otherwise only the last N layers go to the GPUs (`-ngl N`) and every layer's experts stay in RAM.
  Without a GPU everything is in RAM (`-ngl 0`).
- **KV cache.** llama_kv_cache_dsv4 as llama.cpp 0.5 allocates it at `-c` (src/llama-kv-cache-dsv4.cpp),
  f16, K only (MLA; K and V types equal): every layer's sliding window (n_swa + n_ubatch cells, padded
  to 256), the CSA layers' ctx/4 compressed entries and their indexer keys, the HCA layers' ctx/128,
  and the compressor states (f32). One slot (`-np 1`). `-c` is lowered (in steps of 256) until it fits.
- **Quant.** The largest whose plan fits RAM plus VRAM, or `--quant NAME`.
- **RAM.** Read from the OS, or declared (`--ram GIB`); the budget keeps 10% (at least 2 GiB) for the OS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dsv4serve.engines.llamacpp.engine import llama_args
from dsv4serve.errors import UsageError
from dsv4serve.hardware.inventory import GiB, MiB, gib
from dsv4serve.planning.engine_types import GgufPlan, QuantFit
from dsv4serve.planning.types import MemoryRow, Plan

PAD = 256  # llama.cpp pads every KV cache to 256 cells
N_UBATCH = 512  # llama-server's default physical batch
F16 = 2
F32 = 4
CSA, HCA = 4, 128
MIN_CONTEXT = 4096  # below this a plan refuses rather than serve a useless context
DENSE_BITS_RATIO = 8.5 / 8  # the non-expert tensors at ~Q8_0, from an FP8 checkpoint
RAM_KEEP_FRACTION = 0.10
RAM_KEEP_MIN = 2 * GiB
GPU_UTILIZATION = 0.95  # of what CUDA can use: llama.cpp has no allocator headroom knob like vLLM's
# What the process holds besides weights, KV and compute buffers (tests/test_engines_live.py checks
# the KV figures against llama-server's own log, and the compute bound).
RUNTIME_BYTES = 256 * MiB
# llama-server keeps up to 32 context checkpoints per slot in RAM (the sliding-window KV and compressor
# states of a point in the conversation): at most the context-independent part of the cache, each.
CHECKPOINTS = 32
# Compute buffers (activations of one n_ubatch batch): llama.cpp sizes them from the graph. A bound that
# grows with the context (the indexer scores ctx/4 entries per token of the batch). Measured with
# tiny-v4 (llama-server 0.5.0, CPU, -lv 4 "compute buffer size"): 79.6 MiB at -c 4096, 141.8 MiB at
# 65,536, 384.1 MiB at 262,144, i.e. ~75 MiB + 1,292 B/token; the base here leaves room for a real
# vocabulary's logits (Flash: 512 x 129,280 x 4 B = 252 MiB).
COMPUTE_BASE_BYTES = 512 * MiB
COMPUTE_PER_TOKEN_BYTES = 1536  # x context


@dataclass(frozen=True)
class Room:
    """What the server may use: each GPU's budget and the RAM budget (0 = unknown: not checked)."""

    gpus: tuple[int, ...]
    ram: int


def kv_bytes(kv_cache, context: int) -> int:
    """llama_kv_cache_dsv4's buffers at `-c context`, one slot (f16 caches, f32 compressor states)."""
    d, i, window = kv_cache.head_dim, kv_cache.index_head_dim, kv_cache.sliding_window
    raw_cells = _pad(min(context, window + N_UBATCH))
    csa_cells = _pad(max(1, math.ceil(context / CSA)))
    hca_cells = _pad(max(1, math.ceil(context / HCA)))
    total = 0
    for ratio in kv_cache.compress_ratios:
        total += raw_cells * d * F16  # the raw sliding-window K of every layer
        if ratio == CSA:
            total += csa_cells * d * F16 + csa_cells * i * F16  # compressed K, indexer keys
            total += 2 * (2 * d) * (2 * CSA) * F32 + 2 * (2 * i) * (2 * CSA) * F32  # kv + score states
        elif ratio == HCA:
            total += hca_cells * d * F16 + 2 * d * HCA * F32
    return total


def checkpoint_bytes(kv_cache) -> int:
    """One context checkpoint at most: every layer's sliding-window K and the compressor states."""
    d, i, window = kv_cache.head_dim, kv_cache.index_head_dim, kv_cache.sliding_window
    total = 0
    for ratio in kv_cache.compress_ratios:
        total += _pad(window + N_UBATCH) * d * F16
        if ratio == CSA:
            total += 2 * (2 * d) * (2 * CSA) * F32 + 2 * (2 * i) * (2 * CSA) * F32
        elif ratio == HCA:
            total += 2 * d * HCA * F32
    return total


def host_overhead(profile) -> int:
    """RAM the server holds besides weights, KV and compute buffers: the process, its checkpoints."""
    return RUNTIME_BYTES + CHECKPOINTS * checkpoint_bytes(profile.model.kv_cache)


def _pad(cells: int) -> int:
    return -(-cells // PAD) * PAD


def compute_bytes(context: int) -> int:
    return COMPUTE_BASE_BYTES + COMPUTE_PER_TOKEN_BYTES * context


def weight_split(profile, weights: int) -> tuple[int, int]:
    """(dense bytes, routed-expert bytes) of a quant of `weights` bytes."""
    model = profile.model
    dense_ckpt = max(0, model.weights_bytes - model.expert_weights_bytes) if model.expert_weights_bytes else 0
    dense = min(int(dense_ckpt * DENSE_BITS_RATIO), int(weights * 0.9)) if dense_ckpt else weights // 10
    return dense, weights - dense


@dataclass(frozen=True)
class _Fit:
    fits: bool
    context: int
    gpu_layers: int
    cpu_moe: int
    kv: int
    compute: int
    gpu_weights: int
    gpu_need: tuple[int, ...]  # per GPU
    ram_need: int
    problem: str = ""


def _place(profile, weights: int, context: int, room: Room) -> _Fit:
    """The offload for one quant at one context: the fewest experts in RAM the GPUs allow."""
    layers = profile.model.layers
    dense, experts = weight_split(profile, weights)
    kv = kv_bytes(profile.model.kv_cache, context)
    compute = compute_bytes(context)
    per_layer_dense, per_layer_experts = dense / layers, experts / layers
    vram = sum(room.gpus)
    if not room.gpus:
        ram = weights + kv + compute + host_overhead(profile)
        return _ram_fit(room, context, 0, layers, kv, compute, 0, (), ram)
    gpu_compute = compute * len(room.gpus)
    # every layer on the GPUs: dense + KV + compute there, then as many layers' experts as fit
    base = dense + kv + gpu_compute
    if base <= vram:
        on_gpu = min(layers, int((vram - base) // per_layer_experts)) if per_layer_experts else layers
        cpu_moe = layers - on_gpu
        gpu_weights = dense + int(per_layer_experts * on_gpu)
        ram = weights - gpu_weights + compute + host_overhead(profile)
        need = _spread(gpu_weights + kv, compute, room.gpus)
        return _ram_fit(room, context, layers + 1, cpu_moe, kv, compute, gpu_weights, need, ram)
    # not even the dense part of every layer: the last N layers only, experts all in RAM
    per_layer = per_layer_dense + kv / layers
    n = max(0, min(layers, int((vram - gpu_compute) // per_layer))) if vram > gpu_compute else 0
    gpu_weights = int(per_layer_dense * n)
    gpu_kv = int(kv * n / layers)
    ram = weights - gpu_weights + (kv - gpu_kv) + compute + host_overhead(profile)
    need = _spread(gpu_weights + gpu_kv, compute, room.gpus) if n else ()
    return _ram_fit(room, context, n, layers, kv, compute, gpu_weights, need, ram)


def _spread(total: int, compute: int, budgets: tuple[int, ...]) -> tuple[int, ...]:
    """llama.cpp splits layers over GPUs in proportion to their memory: each GPU's share plus its buffers."""
    whole = sum(budgets)
    return tuple(math.ceil(total * b / whole) + compute for b in budgets)


def _ram_fit(room, context, ngl, cpu_moe, kv, compute, gpu_weights, need, ram) -> _Fit:
    problem = ""
    if room.ram and ram > room.ram:
        beside = " beside the GPUs" if room.gpus else ""
        problem = f"needs {gib(ram)} of RAM{beside}; the budget is {gib(room.ram)}"
    elif any(n > b for n, b in zip(need, room.gpus, strict=False)):
        problem = "the GPUs cannot hold their share"
    return _Fit(not problem, context, ngl, cpu_moe, kv, compute, gpu_weights, need, ram, problem)


def _best_context(profile, weights: int, requested: int, room: Room) -> _Fit:
    """The longest context (multiple of 256, at most `requested`) whose placement fits."""
    fit = _place(profile, weights, requested, room)
    if fit.fits:
        return fit
    low, high = 0, requested // PAD  # in units of 256 tokens: fits at low*256 (0 = none), not at high
    while high - low > 1:
        mid = (low + high) // 2
        if _place(profile, weights, mid * PAD, room).fits:
            low = mid
        else:
            high = mid
    if low * PAD < min(requested, MIN_CONTEXT):
        return fit  # the requested context's problem says why
    return _place(profile, weights, low * PAD, room)


def plan_llamacpp(
    profile,
    model_file: str,
    gpus: tuple,
    overrides,
    requested: int,
    *,
    ram_total: int,
    ram_source: str,
    host_cpus: int,
    quant: str | None = None,
    thinking: bool | None = None,
    sizes: dict[str, int] | None = None,
) -> Plan:
    """The llama.cpp plan: quant, offload and context on these GPUs (none: the CPU) and this RAM.
    sizes: the hub's exact bytes per quant, replacing the profile's (the download step's re-plan)."""
    gguf = hub_gguf(profile)
    if profile.model.kv_cache is None:
        raise UsageError(
            f"profile {profile.name!r} has no DeepSeek-V4 cache facts (model.kv_cache): "
            "llama.cpp plans V4 only",
            "use --engine vllm for this profile",
        )
    if gguf is None and profile.model.repo:
        raise UsageError(
            f"profile {profile.name!r} names no GGUF files (model.gguf) for llama.cpp",
            f"use a GGUF profile (dsv4serve profiles list), or add model.gguf to {profile.name}",
        )
    quants = _quants(profile, gguf, sizes or {})
    if quant is not None and quant not in {q[0] for q in quants}:
        names = ", ".join(q[0] for q in quants)
        raise UsageError(f"--quant {quant}: profile {profile.name} has no such GGUF", f"use one of: {names}")
    room = Room(tuple(_gpu_budget(g) for g in gpus), _ram_budget(ram_total))
    weighed, chosen = [], None
    for name, pattern, size, exact in sorted(quants, key=lambda q: -q[2]):
        fit = _best_context(profile, size, requested, room)
        weighed.append(QuantFit(name, size, exact, fit.fits, fit.context if fit.fits else 0))
        wanted = quant or (gguf.quant if gguf and gguf.quant else None)
        if (wanted is None and chosen is None and fit.fits) or name == wanted:
            chosen = (name, pattern, size, exact, fit)
    if chosen is None:  # nothing fits: plan the smallest, whose problem says by how much
        name, pattern, size, exact = min(quants, key=lambda q: q[2])
        chosen = (name, pattern, size, exact, _place(profile, size, min(requested, MIN_CONTEXT), room))
    name, pattern, size, exact, fit = chosen
    ask = _Ask(model_file, tuple(gpus), overrides, requested, ram_source, host_cpus, thinking, gguf)
    return _plan(profile, ask, room, (name, pattern, size, exact), fit, tuple(weighed))


@dataclass(frozen=True)
class _Ask:
    """What the plan was asked for (plan_llamacpp's arguments that _plan reads)."""

    model_file: str
    gpus: tuple
    overrides: object
    requested: int
    ram_source: str
    host_cpus: int
    thinking: bool | None
    gguf: object


def _plan(profile, ask: _Ask, room: Room, quant, fit: _Fit, weighed) -> Plan:
    model_file, gpus, overrides, requested = ask.model_file, ask.gpus, ask.overrides, ask.requested
    ram_source, host_cpus, thinking, gguf = ask.ram_source, ask.host_cpus, ask.thinking, ask.gguf
    name, pattern, size, exact = quant
    if model_file.endswith("/<quant>.gguf"):  # before the download: the repo and the quant's files
        model_file = model_file[: -len("<quant>.gguf")] + pattern
    problems, notes = [], []
    where = f"{len(gpus)}x {gpus[0].name} + RAM" if gpus else "the CPU"
    if not fit.fits:
        others = [q for q in weighed if q.fits]
        problems.append(
            f"{profile.name} ({name}, {gib(size)}) does not fit {where}: {fit.problem}"
            + (f"; {others[0].name} would (--quant {others[0].name})" if others else "")
        )
    if fit.fits and fit.context < requested:
        notes.append(
            f"context lowered from {requested} to {fit.context} (-c): the largest multiple of {PAD} whose "
            "KV cache and compute buffers fit"
        )
    if not room.ram:
        notes.append("host RAM unknown: not checked (declare it with --ram GIB)")
    if not exact:
        notes.append(
            f"{name}'s size {gib(size)} is a stand-in until the hub lists the files: `up` plans again "
            "with the listing before the first byte"
        )
    if len(weighed) > 1:
        notes.append(
            "quants, largest first: "
            + ", ".join(f"{q.name} {gib(q.bytes)} {'fits' if q.fits else 'no'}" for q in weighed)
        )
    notes.append(
        f"offload: -ngl {fit.gpu_layers} (of {profile.model.layers} layers"
        + (", output too" if fit.gpu_layers > profile.model.layers else "")
        + f"), --n-cpu-moe {fit.cpu_moe}: {gib(fit.gpu_weights)} of weights on GPUs, the rest in RAM"
        if gpus
        else "CPU only: every weight in RAM (-ngl 0)"
    )
    # Half the CPUs (the physical cores behind SMT): ggml's threads spin while they wait, and on a
    # busy 2-core machine 2 threads decoded tiny-v4 at 0.6 tokens/s where 1 thread gave 117.
    threads = max(1, host_cpus // 2) if host_cpus else 0
    alias = profile.serve.served_model_name or profile.name
    args = llama_args(
        model_file,
        alias,
        overrides.host,
        overrides.port,
        fit.context,
        fit.gpu_layers,
        fit.cpu_moe if gpus else 0,  # without GPUs every expert is in RAM anyway
        thinking,
        threads,
        overrides.extra_args,
    )
    rows = [
        MemoryRow(
            str(g.index),
            g.name,
            _share(fit.gpu_weights, room.gpus, k),
            _share(kv_gpu(fit, profile), room.gpus, k),
            fit.compute,
            need,
            room.gpus[k],
            g.memory_free,
        )
        for k, (g, need) in enumerate(zip(gpus, fit.gpu_need or (0,) * len(gpus), strict=False))
    ]
    ram_kv = fit.kv - kv_gpu(fit, profile)
    rows.append(
        MemoryRow(
            "ram",
            "host RAM",
            size - fit.gpu_weights,
            ram_kv,
            fit.compute + host_overhead(profile),
            fit.ram_need,
            room.ram,
            0,
        )
    )
    engine_plan = GgufPlan(
        repo=gguf.repo if gguf else None,
        revision=gguf.revision if gguf else None,
        quant=name,
        pattern=pattern,
        weights_bytes=size,
        weights_exact=exact,
        layers=profile.model.layers,
        gpu_layers=fit.gpu_layers,
        cpu_moe_layers=fit.cpu_moe,
        context=fit.context,
        kv_bytes=fit.kv,
        compute_bytes=fit.compute,
        gpu_weights_bytes=fit.gpu_weights,
        ram_bytes=fit.ram_need,
        ram_budget=room.ram,
        ram_source=ram_source,
        threads=threads,
        thinking=thinking,
        quants=weighed,
    )
    verdict = f"fits on {where} ({name}, -c {fit.context})" if not problems else problems[0]
    return Plan(
        profile=profile.name,
        device="cuda" if gpus else "cpu",
        fits=not problems,
        tensor_parallel_size=1,
        max_model_len=fit.context,
        gpu_memory_utilization=GPU_UTILIZATION,
        cuda_graphs=False,
        model=model_file,
        gpus=tuple(gpus),
        memory=tuple(rows),
        args=args,
        env=tuple(sorted(dict(profile.serve.env).items())),
        problems=tuple(problems),
        notes=tuple(notes),
        verdict=verdict,
        engine="llama.cpp",
        engine_plan=engine_plan,
    )


def hub_gguf(profile):
    """The profile's hub GGUF, or None when llama.cpp converts its own checkpoint: a generated or local
    checkpoint (a layer cut extending flash) never takes the GGUF of the full model it extends."""
    gguf = profile.model.gguf
    return gguf if gguf is not None and gguf.repo and profile.model.repo else None


def kv_gpu(fit: _Fit, profile) -> int:
    """The KV cache of the layers on GPUs (llama.cpp keeps each layer's cache with the layer)."""
    layers = profile.model.layers
    return fit.kv if fit.gpu_layers > layers else int(fit.kv * fit.gpu_layers / layers)


def _share(total: int, budgets: tuple[int, ...], k: int) -> int:
    return math.ceil(total * budgets[k] / sum(budgets)) if budgets and sum(budgets) else 0


def _gpu_budget(gpu) -> int:
    return int(min(gpu.memory_free, GPU_UTILIZATION * gpu.memory_usable))


def _ram_budget(total: int) -> int:
    return max(0, total - max(RAM_KEEP_MIN, int(total * RAM_KEEP_FRACTION))) if total else 0


def _quants(profile, gguf, sizes: dict[str, int]) -> list[tuple[str, str, int, bool]]:
    """(name, pattern, bytes, exact) of each quant; a converted checkpoint is one quant of its own."""
    if gguf is None or not gguf.quants:
        size = sizes.get("converted", profile.model.weights_bytes)
        return [("converted", "*.gguf", size, "converted" in sizes or profile.model.weights_exact)]
    found = []
    for q in gguf.quants:
        size = sizes.get(q.name, q.bytes)
        if not size:  # not known offline: the checkpoint's size stands in
            size = profile.model.weights_bytes
        found.append((q.name, q.pattern, size, q.name in sizes or (q.exact and bool(q.bytes))))
    return found


def with_model_file(plan: Plan, model_file: str) -> Plan:
    """The same plan with the GGUF's local path (after the weights step) in its argv."""
    args = list(plan.args)
    args[args.index("-m") + 1] = model_file
    return replace(plan, args=tuple(args), model=model_file)
