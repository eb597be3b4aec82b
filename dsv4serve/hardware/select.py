"""--gpus: its syntax (a count or a list of indices and UUIDs) and the GPUs it picks from an inventory."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from dsv4serve.errors import HardwareError, UsageError
from dsv4serve.hardware.inventory import INDEX_RE, Gpu, Inventory, match_gpu, quoted

# A --gpus entry that is no index: a GPU UUID (GPU-8-4-4-4-12 hex digits) or a prefix of one.
_UUID_RE = re.compile(r"^(?:gpu-)?[0-9a-f][0-9a-f-]{0,35}$", re.IGNORECASE | re.ASCII)
_GPUS_HINT = "write a count (--gpus 2), GPU indices (--gpus 0,1) or GPU UUIDs (see `dsv4serve gpus`)"


def _describe_models(gpus: tuple[Gpu, ...]) -> str:
    counts = Counter(g.name for g in gpus)
    return ", ".join(f"{n}x {name}" for name, n in counts.items())


@dataclass(frozen=True)
class Selection:
    gpus: tuple[Gpu, ...]
    notes: tuple[str, ...] = ()


def parse_gpus(spec: str | None) -> int | tuple[str, ...] | None:
    """--gpus as written: None (all), a count, or a list of indices and UUID (prefixes). Syntax only,
    so that a malformed value is a usage error (exit 2) before NVML is asked (exit 3 without it)."""
    if spec is None or not spec.strip():
        return None
    spec = spec.strip()
    if INDEX_RE.match(spec):
        if int(spec) < 1:
            raise UsageError(f"--gpus {spec}: a server needs at least one GPU", "for GPU 0 write --gpus 0,")
        return int(spec)
    entries = [t.strip() for t in spec.removesuffix(",").split(",")]  # "0,": GPU 0 ("0" is a count)
    if not any(entries):
        raise UsageError(f"--gpus {quoted(spec)} names no GPU", _GPUS_HINT)
    for entry in entries:
        if not (INDEX_RE.match(entry) or _UUID_RE.match(entry)):
            what = f"{quoted(entry, 40)} is" if entry else "an empty entry is"
            raise UsageError(f"--gpus {quoted(spec)}: {what} not a GPU index or UUID", _GPUS_HINT)
    return tuple(entries)


def select_gpus(inventory: Inventory, spec: str | None) -> Selection:
    """--gpus N: the N GPUs of one model with the most free memory; --gpus 0,1 or UUIDs: those;
    no --gpus: every visible GPU of the most common model (ties: the larger GPU)."""
    gpus = inventory.gpus
    parsed = parse_gpus(spec)
    if parsed is None:
        if not gpus:
            return Selection(())
        counts = Counter(g.name for g in gpus)
        memory = {g.name: g.memory_total for g in gpus}
        model = max(counts, key=lambda name: (counts[name], memory[name]))
        chosen = tuple(g for g in gpus if g.name == model)
        notes = ()
        if len(chosen) < len(gpus):
            notes = (
                f"using the {len(chosen)}x {model}; left out "
                f"{_describe_models(tuple(g for g in gpus if g not in chosen))}"
                " (one server uses one GPU model; choose with --gpus)",
            )
        return Selection(chosen, notes)
    if isinstance(parsed, int):
        return _select_count(gpus, parsed)
    spec = (spec or "").strip()
    chosen_list: list[Gpu] = []
    for token in parsed:
        gpu = match_gpu(gpus, token)
        if gpu is None:
            shown = ", ".join(f"{g.index} ({g.uuid or g.name})" for g in gpus[:16]) or "none"
            raise UsageError(
                f"--gpus {quoted(spec)}: no visible GPU {quoted(token, 40)}", f"visible GPUs: {shown}"
            )
        if gpu in chosen_list:
            raise UsageError(f"--gpus {quoted(spec)}: GPU {quoted(token, 40)} is named twice")
        chosen_list.append(gpu)
    chosen = tuple(chosen_list)
    if len({g.name for g in chosen}) > 1:
        raise HardwareError(
            f"--gpus {quoted(spec)} mixes GPU models ({_describe_models(chosen)}); "
            "one server needs one model",
            "choose GPUs of one model (see `dsv4serve gpus`)",
        )
    return Selection(chosen)


def _select_count(gpus: tuple[Gpu, ...], count: int) -> Selection:
    if count > len(gpus):
        raise HardwareError(
            f"--gpus {count}: only {len(gpus)} GPU(s) visible ({_describe_models(gpus) or 'none'})",
            "use fewer GPUs, or plan for others with --hardware",
        )
    best: tuple[Gpu, ...] = ()
    for model in dict.fromkeys(g.name for g in gpus):
        group = sorted((g for g in gpus if g.name == model), key=lambda g: (-g.memory_free, g.index))
        if len(group) >= count:
            top = tuple(group[:count])
            if not best or sum(g.memory_free for g in top) > sum(g.memory_free for g in best):
                best = top
    if not best:
        raise HardwareError(
            f"--gpus {count}: no {count} GPUs of one model ({_describe_models(gpus)}); "
            "one server needs one model",
            "use fewer GPUs, or name them: --gpus 0,1",
        )
    return Selection(tuple(sorted(best, key=lambda g: g.index)))
