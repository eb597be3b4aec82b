"""The planner's entry point (pure: no I/O, no environment, no clock): make_plan picks the TP size,
the max length and the memory budget per GPU, over the pieces next door (types, memory, strategy,
spec, node_args, fit for how a layout fits the GPUs, and cpu for the CPU path)."""

from __future__ import annotations

from dataclasses import asdict, replace

from dsv4serve.engines.vllm.argv import command, vllm_args
from dsv4serve.engines.vllm.flags import read_tokens
from dsv4serve.engines.vllm.jit_cache import startup_env
from dsv4serve.engines.vllm.releases import DEFAULT as DEFAULT_RELEASE
from dsv4serve.engines.vllm.releases import Release, describe, release_for
from dsv4serve.errors import HardwareError, UsageError, oneline
from dsv4serve.hardware.inventory import Gpu, capability_key, gib, gpu_to_dict
from dsv4serve.planning.cpu import plan_cpu
from dsv4serve.planning.fit import Fit, fit_memory, staged_context, what_would_fit
from dsv4serve.planning.memory import (
    KvContext,
    kv_block_size,
    kv_need_bytes,
    kv_summary,
    overhead_for,
)
from dsv4serve.planning.node_args import cpu_nodes, layout_args, with_nodes
from dsv4serve.planning.spec import SpecChoice, resolve_spec, served_profile
from dsv4serve.planning.strategy import (
    Layout,
    choose_layouts,
    kv_profile,
    reason,
    weights_per_gpu,
)
from dsv4serve.planning.types import MemoryRow, Overrides, Plan, SpecSummary
from dsv4serve.profiles.types import Profile

__all__ = [
    "MemoryRow",
    "Overrides",
    "Plan",
    "default_model_location",
    "make_plan",
    "plan_to_dict",
]

# Eager against CUDA graphs for DeepSeek-V4, measured at Flash's true layer shape cut to 4 layers on one
# H200, vLLM 0.26, TP 1 (docs/validation.md, issue 20; capture sizes 1-64). Eager stays the default.
V4_GRAPHS_TRADEOFF = (
    "measured at Flash's layer shape on one H200 (vLLM 0.26): CUDA graphs decode one stream at "
    "211-234 tok/s against eager's 40-46 (~5.1x), first token 0.03-0.05 s against 0.06-0.09 s; they "
    "cost 0.72 GiB by vLLM's estimate (planned as 3 GiB); ready in 134 s with a warm JIT cache"
)


def default_model_location(profile: Profile) -> str | None:
    return profile.model.repo or profile.model.path


def plan_to_dict(plan: Plan) -> dict:
    data = asdict(plan)
    data["gpus"] = [gpu_to_dict(g) for g in plan.gpus]
    data["argv"] = list(command(plan))
    data["env"] = dict(plan.env)
    data["nodes"] = [
        {"rank": n.rank, "role": n.role, "argv": list(n.argv), "env": dict(n.env)} for n in plan.nodes
    ]
    for key in ("args", "problems", "notes", "suggestions"):
        data[key] = list(data[key])
    return data


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
    nodes: int = 1,
) -> Plan:
    """Decide how vLLM starts on these GPUs (or the CPU), on each of `nodes` alike nodes, and whether it
    fits. `gpus` are one node's."""
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
    release, release_note = modeled_release(overrides)
    if device == "cpu":
        resolve_spec(profile, overrides.spec, overrides.spec_tokens, ())  # a draft on the CPU: refused
        if not profile.cpu_ok:
            raise HardwareError(
                f"profile {profile.name!r} needs NVIDIA GPUs (compute capability "
                f"{profile.model.min_compute_capability}+) and none are usable here",
                "plan for GPUs you do not have with --hardware 2xH200, or use a CPU profile: tiny",
            )
        if nodes > 1:  # TP over the nodes' ranks: --tp ranks in all, else one per node
            local = replace(
                overrides, tensor_parallel_size=(overrides.tensor_parallel_size or nodes) // nodes
            )
            base = plan_cpu(profile, model, requested, local, host_memory, host_cpus)
            return cpu_nodes(base, profile, nodes, overrides)
        plan = plan_cpu(profile, model, requested, overrides, host_memory, host_cpus)
        return with_nodes(plan, Layout("tp", plan.tensor_parallel_size), overrides, "")
    if not gpus:
        raise HardwareError(f"profile {profile.name!r}: no GPUs to plan for", "see `dsv4serve gpus`")
    plan = _plan_cuda(profile, model, requested, overrides, gpus, nodes, release)
    if profile.model.kv_cache is not None and release_note:  # the release matters to V4's cache
        plan = replace(plan, notes=(f"{release_note}: {describe(release)}", *plan.notes))
    return plan


def modeled_release(overrides: Overrides) -> tuple[Release, str]:
    """The vLLM release the plan models, and the note that says so ("" for the pure default, 0.26)."""
    if not overrides.vllm_version:
        return DEFAULT_RELEASE, ""
    version = None if overrides.vllm_version == "none" else overrides.vllm_version
    return release_for(version, overrides.vllm_version_source)


def _plan_cuda(
    profile: Profile, model: str, requested: int, overrides: Overrides, gpus, nodes: int, release: Release
) -> Plan:
    graphs = overrides.cuda_graphs if overrides.cuda_graphs is not None else not profile.serve.enforce_eager
    spec = resolve_spec(profile, overrides.spec, overrides.spec_tokens, gpus)
    checkpoint, profile = profile, served_profile(profile, spec)  # the draft's tensors only when it is on
    if spec.on:
        overrides = replace(overrides, speculative_config=spec.config_json())
    smallest = min(gpus, key=lambda g: g.memory_usable)
    batched = KvContext(
        release,
        _batched_tokens(profile, overrides),
        gpu_memory=smallest.memory_usable,  # vLLM's default step follows the GPU's memory
        gpu_name=smallest.name,
        async_scheduling=overrides.executor != "ray",
        draft_layers=spec.draft_layers,
    )
    choice = choose_layouts(profile, gpus, nodes, overrides.strategy, overrides.tensor_parallel_size)
    best: Fit | None = None
    rejected: list[tuple[Layout, str]] = []  # layouts tried before the chosen one, and why not them
    for layout in choice.layouts:
        chosen = tuple(
            sorted(
                sorted(gpus, key=lambda g: (-g.memory_free, g.index))[: layout.per_node],
                key=lambda g: g.index,
            )
        )
        overhead = overhead_for(profile, graphs, staged_context(batched, layout), layout.world, release)
        fit = fit_memory(profile, chosen, layout, requested, overhead, batched)
        if not fit.problems and fit.max_len == requested:
            best = fit
            break
        rejected.append((layout, fit.problems[0] if fit.problems else f"max_model_len only {fit.max_len}"))
        if best is None or (not fit.problems and (best.problems or fit.max_len > best.max_len)):
            best = fit
    assert best is not None  # choose_layouts always offers one
    rejected = [(lay, why) for lay, why in rejected if lay != best.layout]
    capability = _capability_problems(profile, best.gpus)
    problems = list(choice.problems) + list(best.problems) + capability
    notes = list(choice.notes) + list(best.notes) + list(spec.notes)
    notes += _thinking_notes(profile, release, best.max_len)
    if spec.method == "mtp" and best.layout.tp > 1:
        notes.append(
            "MTP with TP > 1 deadlocked in vllm issue 41402 (NCCL under batches > 1; a start-up refusal "
            "was proposed, vLLM 0.32's code has none): which releases are fixed is not known here; watch "
            "the first requests, or serve it at TP 1 or DP+EP (--strategy dp-ep)"
        )
    if not profile.model.weights_exact:
        notes.append(
            f"{profile.name}'s size is not known offline: planned with a stand-in of "
            f"{gib(profile.model.weights_bytes, 2)} (see `dsv4serve profiles show {profile.name}`); "
            "`up` plans again with the hub's file sizes before the first byte is downloaded"
        )
    if len(best.gpus) < len(gpus):
        notes.append(f"using {len(best.gpus)} of the {len(gpus)} GPUs given ({best.layout.label})")
    if best.max_len < requested and not best.problems:
        notes.append(
            f"max_model_len lowered from {requested} to {best.max_len}: the largest multiple of the block "
            f"size ({kv_block_size(profile)}) whose KV cache fits next to the weights"
            + (" (vLLM's start-up check)" if profile.model.kv_cache else "")
        )
    notes.append(f"overhead column = {best.overhead.describe()}")
    suggestions = () if not problems else what_would_fit(profile, requested, graphs, release, batched)
    hint = ""
    if capability and profile.model.fallback:
        fallback = profile.model.fallback
        hint = f"on {gpus[0].name} use the profile {fallback}: dsv4serve plan {fallback}"
    where = f"{len(gpus)}x {gpus[0].name}" if nodes == 1 else f"{nodes} nodes x {len(gpus)}x {gpus[0].name}"
    verdict = f"fits on {where}" if not problems else problems[0]
    if best.problems and overrides.tensor_parallel_size is not None and len(best.gpus) < len(gpus):
        # the forced TP size leaves GPUs unused: blame the TP size, not the memory of the GPUs given
        suggestions = ()
        verdict = (
            f"{profile.name} does not fit at TP {best.layout.tp} (forced; {best.layout.tp} of the "
            f"{len(gpus)} GPUs given): {best.problems[0]}; leave --tp out to let the planner choose, "
            "or raise it"
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
    args = vllm_args(profile, model, overrides, best.layout.tp, best.max_len, graphs, best.utilization)
    plan = Plan(
        profile=profile.name,
        device="cuda",
        fits=not problems,
        tensor_parallel_size=best.layout.tp,
        max_model_len=best.max_len,
        gpu_memory_utilization=best.utilization,
        cuda_graphs=graphs,
        model=model,
        gpus=best.gpus,
        memory=best.rows,
        args=layout_args(args, best.layout, profile),
        env=tuple(env.items()),
        verdict=verdict,
        hint=hint,
        problems=tuple(problems),
        notes=tuple(notes),
        suggestions=suggestions,
        graphs_tradeoff=V4_GRAPHS_TRADEOFF if profile.model.kv_cache is not None else "",
        kv=kv_summary(
            kv_profile(profile, best.layout, best.max_len, batched),
            best.max_len,
            best.layout.tp,
            staged_context(batched, best.layout),
        ),
        vllm_release=release.version,
        spec=_spec_summary(spec, checkpoint, profile, best, batched),
    )
    return with_nodes(plan, best.layout, overrides, reason(best.layout, profile, rejected))


THINK_MAX_LEN = 393_216  # DeepSeek-V4's Think Max reasoning needs max_model_len >= this (the facts)


def _thinking_notes(profile: Profile, release: Release, max_len: int) -> list[str]:
    """DeepSeek-V4's reasoning modes against the plan: Think Max's length, 0.28+'s thinking default."""
    if profile.serve.tokenizer_mode != "deepseek_v4":
        return []
    notes = []
    if max_len < THINK_MAX_LEN:
        notes.append(
            f"max_model_len {max_len:,} is below the {THINK_MAX_LEN:,} tokens Think Max reasoning needs: "
            "a Think Max answer will be truncated"
        )
    if release.thinking_by_default:
        notes.append(
            f"vLLM {release.version} thinks by default with --tokenizer-mode deepseek_v4: a request that "
            'wants a plain answer passes chat_template_kwargs {"thinking": false} (up\'s curl line and '
            "smoke do), or its few tokens may all be reasoning"
        )
    return notes


def _spec_summary(
    spec: SpecChoice, checkpoint: Profile, served: Profile, best: Fit, ctx: KvContext
) -> SpecSummary:
    """The draft's memory per GPU: its weights (when known) and what its KV layers add to the need."""
    if not spec.on:
        return SpecSummary("off")
    layout, length = best.layout, best.max_len
    staged = staged_context(ctx, layout)
    stage = kv_profile(served, layout, length, staged)
    kv = kv_need_bytes(stage, length, layout.tp, staged) - kv_need_bytes(
        stage, length, layout.tp, replace(staged, draft_layers=0)
    )
    weights = 0
    if spec.draft_weights_bytes:  # the layout's share of the draft's bytes
        without = replace(
            checkpoint.model, weights_bytes=checkpoint.model.weights_bytes - spec.draft_weights_bytes
        )
        weights = weights_per_gpu(checkpoint, layout) - weights_per_gpu(
            replace(checkpoint, model=without), layout
        )
    return SpecSummary(
        spec.method,
        spec.tokens,
        spec.draft_layers,
        spec.draft_weights_bytes,
        weights,
        kv,
        spec.config_json(),
    )


def _batched_tokens(profile: Profile, overrides: Overrides) -> int | None:
    """--max-num-batched-tokens as vLLM will see it (the last one before a `--` wins), else the profile's.

    Read as the flag's own check reads it (flags.read_tokens: ASCII digits, 13 at most, or 128K); not
    str.isdigit(), which takes '²' (int() refuses it) and 5,000 digits (int() refuses past 4,300)."""
    value = profile.serve.max_num_batched_tokens
    args = (*profile.serve.extra_args, *overrides.extra_args)
    args = args[: args.index("--")] if "--" in args else args  # after it, argparse reads no flag
    for i, arg in enumerate(args):
        if arg.startswith("--max-num-batched-tokens="):
            text = arg.split("=", 1)[1]
        elif arg == "--max-num-batched-tokens" and i + 1 < len(args):
            text = args[i + 1]
        else:
            continue
        tokens = read_tokens(text)
        if tokens is None:
            raise UsageError(
                f"--max-num-batched-tokens {oneline(text, 60)}: expected a number of tokens (e.g. 8192)"
            )
        value = tokens
    return value


def _capability_problems(profile: Profile, gpus: tuple[Gpu, ...]) -> list[str]:
    need, fallback = profile.model.min_compute_capability, profile.model.fallback
    instead = f": use the profile {fallback} there" if fallback else ""
    return [
        f"{name} has compute capability {cc}, below the {need} that {profile.name} needs{instead}"
        for name, cc in dict.fromkeys((g.name, g.compute_capability) for g in gpus)
        if capability_key(cc) < capability_key(need)
    ]


def _or_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
