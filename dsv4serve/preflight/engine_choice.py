"""Which engine serves a profile, and its plan: --engine, else the profile's serve.engine, else auto.

auto: vLLM where it can run the model (GPUs of the profile's compute capability, or a CPU profile on
vLLM's CPU build); otherwise llama.cpp (DeepSeek-V4 on CPUs, Macs and older GPUs, from GGUF files);
and when llama-server is not installed but the model fits Transformers' bf16 (tiny-v4 on a CPU), the
start picks Transformers. vLLM plans through preflight.options.plan_from_options; the others through
planning/llamacpp.py and planning/transformers.py, with the host's RAM (from the OS, or --ram GIB).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT

GiB = 1024**3
MAX_RAM_GIB = 1 << 20  # 1 PiB: a declared RAM larger than any machine is a typo


@dataclass(frozen=True)
class EngineOptions:
    """The engine options of plan/up/smoke/download."""

    engine: str | None = None  # --engine; None = the profile's serve.engine, else auto
    quant: str | None = None  # --quant (llama.cpp)
    ram_gib: float | None = None  # --ram: the host RAM to plan with (default: the OS's)
    thinking: bool | None = None  # --thinking/--no-thinking (llama.cpp, Transformers)


def requested_engine(profile, options: EngineOptions) -> str:
    """The engine asked for: --engine, else serve.engine, else auto (canonical names)."""
    from dsv4serve.engines.base import AUTO, engine_name

    if options.engine:
        return engine_name(options.engine)
    if profile.serve.engine:
        return engine_name(profile.serve.engine, "serve.engine")
    return AUTO


def host_inventory(hardware: str | None, device: str | None):
    """The GPUs (declared, NVML, or none) and the host, without refusing a GPU profile on a CPU."""
    from dsv4serve.errors import HardwareError
    from dsv4serve.hardware.inventory import cpu_inventory, parse_hardware, read_inventory

    if hardware:
        return parse_hardware(hardware)
    if device == "cpu":
        return cpu_inventory()
    try:
        inventory = read_inventory()
    except HardwareError:
        return cpu_inventory()
    host = cpu_inventory()
    return dataclasses.replace(inventory, host_memory_total=host.host_memory_total, host_cpus=host.host_cpus)


def vllm_can_run(profile, inventory) -> bool:
    """GPUs of the profile's compute capability, or a profile vLLM's CPU build runs."""
    from dsv4serve.hardware.inventory import capability_key

    if inventory.gpus:
        need = capability_key(profile.model.min_compute_capability)
        return all(capability_key(g.compute_capability) >= need for g in inventory.gpus)
    return profile.cpu_ok


def choose_engine(profile, inventory, asked: str, starting: bool) -> tuple[str, str]:
    """(engine, why) for `asked` (an engine or auto) on this inventory."""
    if asked != "auto":
        return asked, ""
    if vllm_can_run(profile, inventory):
        return "vllm", ""
    where = "these GPUs" if inventory.gpus else "a CPU"
    if profile.model.kv_cache is None:
        return "vllm", ""  # not DeepSeek-V4: nothing else plans it; vLLM's own refusal says why
    if starting and not inventory.gpus:
        from dsv4serve.engines.llamacpp.binary import find_server

        if find_server() is None and transformers_fits(profile, inventory):
            return "transformers", (
                f"engine auto: vLLM cannot run {profile.name} on {where}, and llama-server is not "
                "installed: Transformers (bf16 on the CPU)"
            )
    return "llama.cpp", f"engine auto: vLLM cannot run {profile.name} on {where}: llama.cpp"


def transformers_fits(profile, inventory) -> bool:
    from dsv4serve.planning.transformers import BF16, RUNTIME_BYTES

    need = profile.model.total_params * BF16 + profile.model.weights_bytes + RUNTIME_BYTES
    return bool(profile.model.total_params) and need <= 0.5 * (inventory.host_memory_total or 0)


def ram_total(inventory, ram_gib: float | None, declared: bool) -> tuple[int, str]:
    """The RAM to plan with and where it came from."""
    from dsv4serve.errors import UsageError

    if ram_gib is not None:
        if not 0 < ram_gib <= MAX_RAM_GIB:
            raise UsageError(f"--ram {ram_gib:g}: expected GiB of host RAM, e.g. 256", "e.g. --ram 256")
        return int(ram_gib * GiB), "--ram"
    if declared:
        return 0, "unknown"  # GPUs declared for planning elsewhere: this host's RAM says nothing
    return inventory.host_memory_total, "os" if inventory.host_memory_total else "unknown"


def plan_for_engine(
    profile_name: str,
    engine_options: EngineOptions | None = None,
    *,
    starting: bool = False,
    profile_dirs: Sequence[str] = (),
    gpus: str | None = None,
    hardware: str | None = None,
    max_model_len: int | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    extra_args: Sequence[str] = (),
    model_location: str | None = None,
    device: str | None = None,
    sizes: dict[str, int] | None = None,
    **vllm_options,
):
    """(profile, plan) by the engine chosen; vLLM's plan is plan_from_options' (vllm_options go there)."""
    from dsv4serve.preflight.options import plan_from_options
    from dsv4serve.profiles.load import load_profile

    options = engine_options or EngineOptions()
    profile = load_profile(profile_name, profile_dirs=tuple(profile_dirs or ()))
    shared = dict(profile_dirs=profile_dirs, gpus=gpus, hardware=hardware, max_model_len=max_model_len)
    shared.update(host=host, port=port, extra_args=extra_args, model_location=model_location, device=device)
    asked = requested_engine(profile, options)
    if asked == "vllm" or (asked == "auto" and _vllm_first(profile, hardware, device)):
        return plan_from_options(profile_name, **shared, **vllm_options)
    inventory = host_inventory(hardware, device)
    engine, why = choose_engine(profile, inventory, asked, starting)
    if engine == "vllm":
        return plan_from_options(profile_name, **shared, **vllm_options)
    _refuse_vllm_only(options, vllm_options, engine)
    plan = plan_other(
        profile,
        engine,
        inventory,
        options,
        declared=bool(hardware),
        gpus=gpus,
        max_model_len=max_model_len,
        host=host,
        port=port,
        extra_args=extra_args,
        model_location=model_location,
        sizes=sizes,
    )
    if why:
        plan = dataclasses.replace(plan, notes=(why, *plan.notes))
    return profile, plan


def _vllm_first(profile, hardware: str | None, device: str | None) -> bool:
    """auto without reading the GPUs twice: a CPU profile on the CPU path is vLLM's at once."""
    return profile.cpu_ok and profile.model.kv_cache is None and (device == "cpu" or hardware is None)


def _refuse_vllm_only(options: EngineOptions, vllm_options: dict, engine: str) -> None:
    """vLLM's own knobs with another engine: a usage error naming the knob, not silence."""
    from dsv4serve.errors import UsageError

    node_options = vllm_options.get("node_options")
    if node_options is not None and (node_options.nodes or 1) > 1:
        raise UsageError(f"--nodes: {engine} serves one machine", "drop --nodes, or use --engine vllm")
    for key, flag in (("tensor_parallel_size", "--tp"), ("cuda_graphs", "--cuda-graphs")):
        if vllm_options.get(key) is not None:
            raise UsageError(
                f"{flag} is vLLM's; {engine} does not take it", f"drop {flag}, or use --engine vllm"
            )


def plan_other(
    profile,
    engine: str,
    inventory,
    options: EngineOptions,
    *,
    declared: bool,
    gpus,
    max_model_len,
    host,
    port,
    extra_args,
    model_location,
    sizes,
):
    """The llama.cpp or Transformers plan of a loaded profile on this inventory."""
    from dsv4serve.engines.base import get_engine
    from dsv4serve.hardware.select import select_gpus
    from dsv4serve.planning.types import Overrides

    overrides = Overrides(max_model_len=max_model_len, host=host, port=port, extra_args=tuple(extra_args))
    profile, overrides = get_engine(engine).settle(profile, overrides)
    if gpus and not inventory.gpus:
        from dsv4serve.errors import HardwareError

        raise HardwareError(
            f"--gpus {gpus}: no GPU is visible here (NVML found none)",
            f"drop --gpus to run {engine} on the CPU, or plan for GPUs elsewhere with --hardware 1xRTX4090",
        )
    selection = select_gpus(inventory, gpus)
    requested = requested_context(profile, max_model_len)
    ram, source = ram_total(inventory, options.ram_gib, declared)
    if engine == "llama.cpp":
        from dsv4serve.planning.llamacpp import plan_llamacpp

        plan = plan_llamacpp(
            profile,
            model_location or gguf_placeholder(profile),
            selection.gpus,
            overrides,
            requested,
            ram_total=ram,
            ram_source=source,
            host_cpus=inventory.host_cpus,
            quant=options.quant,
            thinking=options.thinking,
            sizes=sizes,
        )
    else:
        from dsv4serve.planning.transformers import plan_transformers

        if options.quant:
            from dsv4serve.errors import UsageError

            raise UsageError("--quant picks a GGUF of llama.cpp", "drop --quant, or use --engine llama.cpp")
        plan = plan_transformers(
            profile,
            model_location or default_location(profile),
            selection.gpus,
            overrides,
            requested,
            ram_total=ram,
            ram_source=source,
            thinking=options.thinking,
        )
    if selection.notes:
        plan = dataclasses.replace(plan, notes=(*selection.notes, *plan.notes))
    return plan


def requested_context(profile, max_model_len: int | None) -> int:
    """--max-model-len, else the profile's max_model_len, bounded by the model's context."""
    from dsv4serve.errors import UsageError

    limit = profile.model.max_context
    if max_model_len is not None:
        if max_model_len < 1 or (limit and max_model_len > limit):
            raise UsageError(
                f"--max-model-len {max_model_len}: must be 1 to {limit or 'the model context'}",
                f"use --max-model-len {limit} or less" if limit else "use a positive length",
            )
        return max_model_len
    wanted = profile.serve.max_model_len or limit
    return min(wanted, limit) if limit else wanted


def default_location(profile) -> str:
    """Where the weights will be: the hub repo, the local path, or the generated checkpoint's directory."""
    from dsv4serve.preflight.options import default_model_location

    return default_model_location(profile) or profile.name


def gguf_placeholder(profile) -> str:
    """The GGUF's path before the weights step knows it: the repo and the quant's pattern."""
    gguf = profile.model.gguf
    if gguf is not None and gguf.repo:
        return f"{gguf.repo}/<quant>.gguf"
    from dsv4serve.weights.gguf import converted_path

    return str(converted_path(profile))
