"""From the options of plan/up/export to a Plan: the profile, the GPUs (declared, NVML or the CPU), the
overrides, the fit check. The I/O around the pure planner (planning.plan), shared by every command."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT


def resolve_inventory(profile, hardware: str | None = None, device: str | None = None):
    """Declared GPUs (--hardware), NVML, or the host CPU for profiles that may run there."""
    from dsv4serve.errors import HardwareError, UsageError
    from dsv4serve.hardware.inventory import cpu_inventory, parse_hardware, read_inventory

    if device not in (None, "cuda", "cpu"):
        raise UsageError(f"--device {device}: expected cuda or cpu")
    if hardware:
        return parse_hardware(hardware), ()
    if device == "cpu":
        return cpu_inventory(), ()
    try:
        inventory = read_inventory()
    except HardwareError as err:
        if profile.cpu_ok and device is None:
            return cpu_inventory(), (f"no usable NVIDIA GPU ({err.message}): planning the CPU path",)
        if profile.cpu_ok:
            raise
        raise _gpu_required(profile, err.message) from err
    if not inventory.gpus and profile.cpu_ok and device is None:
        return cpu_inventory(), ("no GPU visible (CUDA_VISIBLE_DEVICES?): planning the CPU path",)
    if not inventory.gpus and not profile.cpu_ok:
        raise _gpu_required(profile, "NVML shows no GPU (or CUDA_VISIBLE_DEVICES hides them)")
    if not inventory.gpus:
        raise HardwareError(
            f"no GPU visible to plan {profile.name} on (NVML found none, or CUDA_VISIBLE_DEVICES hides them)",
            "check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or plan with --hardware 2xH200",
        )
    return inventory, ()


def _gpu_required(profile, why: str):
    """The refusal of a GPU-only profile without a GPU, before anything is generated or downloaded."""
    from dsv4serve.errors import HardwareError

    cc = profile.model.min_compute_capability
    # vLLM's CPU build has no kernels for V4's sparse attention, mHC or FP8/MXFP4 layers.
    v4 = " (vLLM's CPU build cannot run DeepSeek-V4)" if profile.model.kv_cache is not None else ""
    gpus = profile.hardware[0].gpus if profile.hardware else 1
    return HardwareError(
        f"profile {profile.name!r} needs an NVIDIA GPU of compute capability {cc}+{v4}; {why}",
        f"run it on such a GPU, or see its plan with `dsv4serve plan {profile.name} --hardware {gpus}xH200`",
    )


def default_model_location(profile) -> str | None:
    """Where vLLM will load from when no path is given: the hub repo, the local path, or the generated dir."""
    from dsv4serve.planning.plan import default_model_location as from_profile

    location = from_profile(profile)
    if location or not profile.model.generate:
        return location
    from dsv4serve.weights.generated import checkpoint_dir

    return str(checkpoint_dir(profile.model.generate))


def announce_shadowing(name: str, profile_dirs) -> None:
    """One line on stderr when a profile name picks a file that hides others of that name (a
    ./profiles/flash.yaml over the built-in flash): plan and up never use a stand-in silently."""
    from dsv4serve.profiles.load import shadowed
    from dsv4serve.render import note

    winner, hidden = shadowed(name, profile_dirs)
    if hidden:
        others = ", ".join(str(p) for p in hidden)
        note(f"profile {name}: using {winner}, which shadows {others} (see `dsv4serve profiles list`)")


# Built-in profiles whose checkpoint changed (issue 19): the name, the variant it serves now, and the
# profile that keeps the old one. Announced once per user (a marker under $XDG_STATE_HOME/dsv4serve).
RENAMED = {
    "flash": (
        "0731",
        "DeepSeek-V4-Flash-0731, the official release (DSpark draft, vLLM >= 0.25)",
        "flash-preview",
    ),
    "pro": ("0813", "DeepSeek-V4-Pro-0813, the official release (DSpark draft, vLLM >= 0.25)", "pro-preview"),
}


def variant_change_note(profile) -> str | None:
    """Once per user: `flash`/`pro` (or a profile extending them) now serve the official release, not the
    preview. The note for the plan, or None (a marker file keeps it from coming back)."""
    import os

    chain = (profile.name, *profile.extends)
    base = next((name for name in chain if name in RENAMED), None)
    if base is None or profile.model.variant != RENAMED[base][0]:
        return None
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    marker = os.path.join(state, "dsv4serve", "notices", f"{base}-{RENAMED[base][0]}")
    if os.path.exists(marker):
        return None
    variant, what, old = RENAMED[base]
    try:
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write(f"{variant}\n")
    except OSError:  # a read-only home: the note comes again next time, nothing fails
        pass
    via = "" if profile.name == base else f" (through `extends: {base}`)"
    return (
        f"profile {profile.name}{via} now serves {what}; the preview checkpoint it served before is "
        f"the profile {old} (said once)"
    )


def plan_from_options(
    profile_name: str,
    *,
    profile_dirs: Sequence[str] = (),
    gpus: str | None = None,
    hardware: str | None = None,
    max_model_len: int | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    cuda_graphs: bool | None = None,
    tensor_parallel_size: int | None = None,
    extra_args: Sequence[str] = (),
    model_location: str | None = None,
    device: str | None = None,
    warmup: str | None = None,
    node_options=None,
    weights_bytes: int | None = None,
    vllm_version: str | None = None,
    spec: str | None = None,
    spec_tokens: int | None = None,
):
    """Load the profile, take stock of the GPUs, select them, and plan: returns (profile, plan).
    node_options (nodes.options.NodeOptions): nodes, strategy, executor, the head's address.
    weights_bytes: the checkpoint's real size (the hub's listing), for a profile with a stand-in.
    vllm_version: the vLLM release to plan for (--vllm-version); default the installed one.
    spec, spec_tokens: speculative decoding (--spec off|mtp|dspark, --spec-tokens K)."""
    from dsv4serve.engines.vllm.flags import settle_overrides
    from dsv4serve.hardware.select import select_gpus
    from dsv4serve.planning.plan import Overrides, make_plan
    from dsv4serve.planning.spec import check_spec
    from dsv4serve.profiles.load import load_profile

    check_spec(spec, spec_tokens)  # before anything is read
    profile = load_profile(profile_name, profile_dirs=tuple(profile_dirs or ()))
    announce_shadowing(profile_name, profile_dirs or ())
    if weights_bytes is not None:  # the hub's (or the disk's) real size replaces a stand-in
        model = dataclasses.replace(profile.model, weights_bytes=weights_bytes, weights_exact=True)
        profile = dataclasses.replace(profile, model=model)
    inventory, notes = resolve_inventory(profile, hardware, device)
    from dsv4serve.preflight.nodes import NodeOptions, with_nodes

    node_options = node_options or NodeOptions()
    inventory = with_nodes(inventory, node_options.nodes)  # one node's GPUs, times the nodes
    selection = select_gpus(inventory, gpus)
    overrides = Overrides(
        model_location=model_location or default_model_location(profile),
        max_model_len=max_model_len,
        host=host,
        port=port,
        cuda_graphs=cuda_graphs,
        tensor_parallel_size=tensor_parallel_size,
        extra_args=tuple(extra_args),
        device=device or ("cpu" if not inventory.gpus else None),
        **startup_overrides(warmup),
        **node_options.overrides(),
        **release_overrides(vllm_version),
        spec=spec,
        spec_tokens=spec_tokens,
    )
    # vLLM flags after `--` that the planner decides become its settings, or are refused (exit 2).
    profile, overrides = settle_overrides(profile, overrides)
    plan = make_plan(
        profile,
        selection.gpus,
        overrides,
        host_memory=inventory.host_memory_total,
        host_cpus=inventory.host_cpus,
        nodes=inventory.nodes,
    )
    changed = variant_change_note(profile)  # once the plan is made: an error above says nothing of it
    notes = (changed, *notes) if changed else notes
    if notes or selection.notes:
        plan = dataclasses.replace(plan, notes=(*notes, *selection.notes, *plan.notes))
    return profile, plan


def release_overrides(vllm_version: str | None) -> dict:
    """The vLLM release to model: --vllm-version, else the installed one (read without importing it),
    else "none" (the planner takes the newest it knows, and says so)."""
    if vllm_version is not None:
        from dsv4serve.engines.vllm.releases import release_for

        release_for(vllm_version)  # a version it cannot read: a usage error now, naming the option
        return {"vllm_version": vllm_version, "vllm_version_source": "--vllm-version"}
    from dsv4serve.engines.base import get_engine

    installed = get_engine().installed_version()
    if installed is None:
        return {"vllm_version": "none", "vllm_version_source": ""}
    return {"vllm_version": installed, "vllm_version_source": "installed"}


def startup_overrides(warmup: str | None) -> dict:
    """The JIT cache env and the DeepGEMM warmup for Overrides; the user's own environment wins."""
    import os

    from dsv4serve.engines.vllm import jit_cache

    if warmup is not None:
        jit_cache.check_warmup(warmup, "--warmup")
    elif os.environ.get(jit_cache.WARMUP_VAR):
        warmup = jit_cache.check_warmup(os.environ[jit_cache.WARMUP_VAR], jit_cache.WARMUP_VAR)
    return {
        "jit_cache_env": jit_cache.cache_env(jit_cache.default_root(), os.environ),
        "deep_gemm_warmup": warmup,
    }


def ensure_fits(plan) -> None:
    """Raise the exit-3 error of a plan that does not fit (after it was rendered)."""
    from dsv4serve.errors import HardwareError

    if plan.fits:
        return
    more = len(plan.problems) - 1
    message = plan.verdict + (
        f" (and {more} more problem{'s' if more > 1 else ''} above)" if more > 0 else ""
    )
    if plan.hint:
        hint = plan.hint
    elif plan.suggestions:
        hint = f"plan such a layout with --hardware {plan.suggestions[0]}, or pick GPUs with --gpus"
    else:
        hint = "see the problems above; `dsv4serve plan --help` lists the knobs"
    raise HardwareError(message, hint)
