"""The llama.cpp planner's one entry point (pure): the Plan from the quant, the offload and the context.

The parts: llamacpp_quants (which quant), llamacpp_offload (GPUs and RAM, the context), llamacpp_kv
(the KV cache and buffers).

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

from dataclasses import dataclass, replace

from dsv4serve.engines.llamacpp.engine import llama_args
from dsv4serve.errors import UsageError
from dsv4serve.hardware.inventory import gib
from dsv4serve.planning.engine_types import GgufPlan
from dsv4serve.planning.llamacpp_kv import PAD, host_overhead
from dsv4serve.planning.llamacpp_offload import GPU_UTILIZATION, Fit, Room, kv_gpu, room_for, share
from dsv4serve.planning.llamacpp_quants import choose_quant, hub_gguf
from dsv4serve.planning.types import MemoryRow, Plan


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
    room = room_for(gpus, ram_total)
    chosen, fit, weighed = choose_quant(profile, gguf, sizes or {}, quant, requested, room)
    ask = _Ask(model_file, tuple(gpus), overrides, requested, ram_source, host_cpus, thinking, gguf)
    return _plan(profile, ask, room, chosen, fit, weighed)


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


def _plan(profile, ask: _Ask, room: Room, quant, fit: Fit, weighed) -> Plan:
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
            share(fit.gpu_weights, room.gpus, k),
            share(kv_gpu(fit, profile), room.gpus, k),
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


def with_model_file(plan: Plan, model_file: str) -> Plan:
    """The same plan with the GGUF's local path (after the weights step) in its argv."""
    args = list(plan.args)
    args[args.index("-m") + 1] = model_file
    return replace(plan, args=tuple(args), model=model_file)
