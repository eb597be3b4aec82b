"""Where one llama.cpp quant goes (pure): -ngl and --n-cpu-moe on these GPUs and this RAM, the context."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dsv4serve.hardware.inventory import GiB, gib
from dsv4serve.planning.llamacpp_kv import PAD, compute_bytes, host_overhead, kv_bytes

MIN_CONTEXT = 4096  # below this a plan refuses rather than serve a useless context
DENSE_BITS_RATIO = 8.5 / 8  # the non-expert tensors at ~Q8_0, from an FP8 checkpoint
RAM_KEEP_FRACTION = 0.10
RAM_KEEP_MIN = 2 * GiB
GPU_UTILIZATION = 0.95  # of what CUDA can use: llama.cpp has no allocator headroom knob like vLLM's


@dataclass(frozen=True)
class Room:
    """What the server may use: each GPU's budget and the RAM budget (0 = unknown: not checked)."""

    gpus: tuple[int, ...]
    ram: int


def room_for(gpus, ram_total: int) -> Room:
    """The budgets on these GPUs (free memory, at most GPU_UTILIZATION of it) and this much RAM."""
    return Room(tuple(_gpu_budget(g) for g in gpus), _ram_budget(ram_total))


def weight_split(profile, weights: int) -> tuple[int, int]:
    """(dense bytes, routed-expert bytes) of a quant of `weights` bytes."""
    model = profile.model
    dense_ckpt = max(0, model.weights_bytes - model.expert_weights_bytes) if model.expert_weights_bytes else 0
    dense = min(int(dense_ckpt * DENSE_BITS_RATIO), int(weights * 0.9)) if dense_ckpt else weights // 10
    return dense, weights - dense


@dataclass(frozen=True)
class Fit:
    """One quant's placement at one context, and whether it fits (else the problem)."""

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


def place(profile, weights: int, context: int, room: Room) -> Fit:
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


def _ram_fit(room, context, ngl, cpu_moe, kv, compute, gpu_weights, need, ram) -> Fit:
    problem = ""
    if room.ram and ram > room.ram:
        beside = " beside the GPUs" if room.gpus else ""
        problem = f"needs {gib(ram)} of RAM{beside}; the budget is {gib(room.ram)}"
    elif any(n > b for n, b in zip(need, room.gpus, strict=False)):
        problem = "the GPUs cannot hold their share"
    return Fit(not problem, context, ngl, cpu_moe, kv, compute, gpu_weights, need, ram, problem)


def best_context(profile, weights: int, requested: int, room: Room) -> Fit:
    """The longest context (multiple of 256, at most `requested`) whose placement fits."""
    fit = place(profile, weights, requested, room)
    if fit.fits:
        return fit
    low, high = 0, requested // PAD  # in units of 256 tokens: fits at low*256 (0 = none), not at high
    while high - low > 1:
        mid = (low + high) // 2
        if place(profile, weights, mid * PAD, room).fits:
            low = mid
        else:
            high = mid
    if low * PAD < min(requested, MIN_CONTEXT):
        return fit  # the requested context's problem says why
    return place(profile, weights, low * PAD, room)


def kv_gpu(fit: Fit, profile) -> int:
    """The KV cache of the layers on GPUs (llama.cpp keeps each layer's cache with the layer)."""
    layers = profile.model.layers
    return fit.kv if fit.gpu_layers > layers else int(fit.kv * fit.gpu_layers / layers)


def share(total: int, budgets: tuple[int, ...], k: int) -> int:
    """GPU k's part of `total`, split in proportion to the GPUs' budgets."""
    return math.ceil(total * budgets[k] / sum(budgets)) if budgets and sum(budgets) else 0


def _gpu_budget(gpu) -> int:
    return int(min(gpu.memory_free, GPU_UTILIZATION * gpu.memory_usable))


def _ram_budget(total: int) -> int:
    return max(0, total - max(RAM_KEEP_MIN, int(total * RAM_KEEP_FRACTION))) if total else 0
