"""The Transformers planner (pure): `transformers serve` holds the model in bf16, on the CPU or one GPU.

Its memory model is the real one: without a GPU kernel for FP8/MXFP4, Transformers dequantizes every
weight to bf16 (2 bytes a parameter) while it reads the checkpoint's own tensors; the KV cache is its
dynamic bf16 cache at the context (V4's compressed layers keep ctx/ratio entries, every layer its
sliding window); the process (torch, Transformers, Uvicorn) holds ~0.6 GiB besides (633 MiB RSS
measured with tiny-v4 on the 2-core CPU machine, weights included). A model that does not fit is
refused with the largest layer cut of it that would.
"""

from __future__ import annotations

import math

from dsv4serve.engines.transformers.engine import transformers_args
from dsv4serve.hardware.inventory import GiB, MiB, gib
from dsv4serve.planning.engine_types import TransformersPlan
from dsv4serve.planning.types import MemoryRow, Plan

BF16 = 2
RUNTIME_BYTES = 640 * MiB  # torch + Transformers + Uvicorn, measured (above)
RAM_KEEP_FRACTION = 0.10
RAM_KEEP_MIN = 1 * GiB
GPU_UTILIZATION = 0.9


def kv_bytes(profile, context: int) -> int:
    """bf16 KV cache of one sequence at `context` tokens (V4: window + compressed entries per layer)."""
    model = profile.model
    kv = model.kv_cache
    if kv is None:
        return model.kv_bytes_per_token * context
    total = 0
    for ratio in kv.compress_ratios:
        total += min(context, kv.sliding_window) * kv.head_dim * BF16
        if ratio > 1:
            total += math.ceil(context / ratio) * kv.head_dim * BF16
        if ratio == 4:
            total += math.ceil(context / ratio) * kv.index_head_dim * BF16
    return total


def plan_transformers(
    profile,
    model: str,
    gpus: tuple,
    overrides,
    requested: int,
    *,
    ram_total: int,
    ram_source: str,
    thinking: bool | None = None,
) -> Plan:
    """bf16 on the CPU (no GPU given) or on the first GPU; refuse what does not fit, saying what would."""
    device = "cuda" if gpus else "cpu"
    used = tuple(gpus[:1])
    weights = profile.model.total_params * BF16
    # the checkpoint's tensors being dequantized: one shard at a time (safetensors are read per shard)
    load = profile.model.weights_bytes // max(1, profile.model.shards)
    kv = kv_bytes(profile, requested)
    problems, notes = [], []
    if not profile.model.total_params:
        problems.append(f"profile {profile.name} gives no model.total_params: bf16 size unknown")
    if device == "cpu":
        budget = max(0, ram_total - max(RAM_KEEP_MIN, int(ram_total * RAM_KEEP_FRACTION))) if ram_total else 0
        need = weights + load + kv + RUNTIME_BYTES
        rows = (MemoryRow("ram", "host RAM", weights, kv, load + RUNTIME_BYTES, need, budget, 0),)
        if not ram_total:
            notes.append("host RAM unknown: not checked (declare it with --ram GIB)")
    else:
        gpu = used[0]
        budget = int(min(gpu.memory_free, GPU_UTILIZATION * gpu.memory_usable))
        need = weights + kv + RUNTIME_BYTES
        rows = (
            MemoryRow(str(gpu.index), gpu.name, weights, kv, RUNTIME_BYTES, need, budget, gpu.memory_free),
        )
        if len(gpus) > 1:
            notes.append(f"using 1 of the {len(gpus)} GPUs given: transformers serve runs on one device")
    where = "the CPU" if device == "cpu" else f"1x {used[0].name}"
    if budget and need > budget and not problems:
        layers = _layers_that_fit(profile, budget - kv - RUNTIME_BYTES - (0 if device == "cuda" else load))
        cut = (
            f"a layer cut of {layers} of its {profile.model.layers} layers would "
            f"(scripts/make_v4_checkpoint.py --layers {layers})"
            if layers
            else "not even one layer would"
        )
        problems.append(
            f"{profile.name} in bf16 needs {gib(need)} on {where} (Transformers dequantizes FP8/FP4 "
            "to bf16); "
            f"the budget is {gib(budget)}: {cut}; use --engine llama.cpp (GGUF) or vllm"
        )
    notes.append(
        f"bf16 after dequantization: {profile.model.total_params:,} parameters x 2 B = {gib(weights, 2)}"
        + (f", read from a {gib(load, 2)} checkpoint" if device == "cpu" else "")
    )
    args = transformers_args(model, overrides.host, overrides.port, device, thinking, overrides.extra_args)
    env = dict(profile.serve.env)
    if device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = used[0].uuid or str(used[0].index)
    return Plan(
        profile=profile.name,
        device=device,
        fits=not problems,
        tensor_parallel_size=1,
        max_model_len=requested,
        gpu_memory_utilization=GPU_UTILIZATION,
        cuda_graphs=False,
        model=model,
        gpus=used,
        memory=rows,
        args=args,
        env=tuple(sorted(env.items())),
        problems=tuple(problems),
        notes=tuple(notes),
        verdict=f"fits on {where} (bf16)" if not problems else problems[0],
        engine="transformers",
        engine_plan=TransformersPlan(device, weights, load, kv, RUNTIME_BYTES, thinking),
    )


def _layers_that_fit(profile, room: int) -> int:
    """Decoder layers of this model whose bf16 weights fit `room` (the embedding and head counted once)."""
    layers = profile.model.layers
    if room <= 0 or not layers:
        return 0
    total = profile.model.total_params * BF16
    per_layer = total / (layers + 1)  # the embedding and the head weigh about a layer's share
    return max(0, min(layers, int(room // per_layer) - 1))
