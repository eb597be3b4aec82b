"""What the plan's text says of a llama.cpp or Transformers plan (render.py prints vLLM's itself)."""

from __future__ import annotations


def engine_title(plan) -> str | None:
    """The table's title of another engine's plan, or None for vLLM's."""
    if plan.engine == "vllm":
        return None
    ep = plan.engine_plan
    if plan.engine == "llama.cpp":
        where = f"{len(plan.gpus)}x {plan.gpus[0].name} + RAM" if plan.gpus else "the CPU"
        return f"plan {plan.profile} with llama.cpp on {where}: {ep.quant}, context {ep.context} (-c)"
    where = f"1x {plan.gpus[0].name}" if plan.gpus else "the CPU"
    return f"plan {plan.profile} with Transformers on {where}: bf16, context {plan.max_model_len}"


def engine_lines(plan) -> list[str]:
    """The lines after the table: how the budget is made."""
    from dsv4serve.hardware.inventory import gib

    ep = plan.engine_plan
    if plan.engine == "llama.cpp":
        ram = {"os": "read from the OS", "--ram": "declared with --ram"}.get(ep.ram_source, "unknown")
        lines = [
            f"budget: GPUs {plan.gpu_memory_utilization:g} x CUDA's total memory; RAM {ram}, less 10% "
            "(at least 2 GiB) for the OS",
            f"KV cache (llama.cpp's DeepSeek-V4 cache, f16 K = V, one slot): {gib(ep.kv_bytes, 2)} at -c "
            f"{ep.context}; compute buffers {gib(ep.compute_bytes, 2)} per device",
        ]
        return lines
    where = "RAM" if plan.device == "cpu" else "the GPU"
    return [f"budget: {where} less 10% (at least 1 GiB); weights in bf16 as Transformers dequantizes them"]
