"""What the llama.cpp and Transformers planners decide beyond a Plan's common fields (Plan.engine_plan)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantFit:
    """One quant of the GGUF repo, as the planner weighed it."""

    name: str
    bytes: int
    exact: bool
    fits: bool
    context: int  # the longest context that fits with it (0: none does)


@dataclass(frozen=True)
class GgufPlan:
    """llama.cpp's decisions: which files, how they split between GPUs and RAM, the context."""

    repo: str | None  # None: converted locally from the profile's checkpoint
    revision: str | None
    quant: str
    pattern: str  # the quant's files in the repo (the only ones downloaded)
    weights_bytes: int
    weights_exact: bool
    layers: int
    gpu_layers: int  # -ngl: the last N layers (their attention, norms, KV) on the GPUs
    cpu_moe_layers: int  # --n-cpu-moe: the first N layers keep their routed experts in RAM
    context: int  # -c
    kv_bytes: int  # the V4 KV cache at that context (llama_kv_cache_dsv4's buffers)
    compute_bytes: int  # compute buffers, per device holding layers
    gpu_weights_bytes: int  # of weights_bytes, what goes to the GPUs
    ram_bytes: int  # what the server needs in RAM: weights kept there, KV of CPU layers, buffers
    ram_budget: int  # what the plan allows it (0: unknown)
    ram_source: str  # "os", "--ram", "unknown"
    threads: int
    thinking: bool | None
    quants: tuple[QuantFit, ...] = ()


@dataclass(frozen=True)
class TransformersPlan:
    """Transformers' decisions: the device and the bf16 memory it takes."""

    device: str  # cpu | cuda
    bf16_weights_bytes: int
    load_bytes: int  # the checkpoint's own tensors, read while dequantizing
    kv_bytes: int
    runtime_bytes: int
    thinking: bool | None
