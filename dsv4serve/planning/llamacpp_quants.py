"""Which GGUF quant llama.cpp serves (pure): the profile's quants and sizes, the largest that fits."""

from __future__ import annotations

from dsv4serve.errors import UsageError
from dsv4serve.planning.engine_types import QuantFit
from dsv4serve.planning.llamacpp_offload import MIN_CONTEXT, Fit, Room, best_context, place

Quant = tuple[str, str, int, bool]  # name, file pattern, bytes, exact (else a stand-in size)


def hub_gguf(profile):
    """The profile's hub GGUF, or None when llama.cpp converts its own checkpoint: a generated or local
    checkpoint (a layer cut extending flash) never takes the GGUF of the full model it extends."""
    gguf = profile.model.gguf
    return gguf if gguf is not None and gguf.repo and profile.model.repo else None


def choose_quant(
    profile, gguf, sizes: dict[str, int], quant: str | None, requested: int, room: Room
) -> tuple[Quant, Fit, tuple[QuantFit, ...]]:
    """(the quant, its fit, every quant weighed largest first): --quant, else the profile's model.gguf.quant,
    else the largest that fits; when none does, the smallest, whose problem says by how much."""
    quants = _quants(profile, gguf, sizes)
    if quant is not None and quant not in {q[0] for q in quants}:
        names = ", ".join(q[0] for q in quants)
        raise UsageError(f"--quant {quant}: profile {profile.name} has no such GGUF", f"use one of: {names}")
    weighed, chosen = [], None
    for name, pattern, size, exact in sorted(quants, key=lambda q: -q[2]):
        fit = best_context(profile, size, requested, room)
        weighed.append(QuantFit(name, size, exact, fit.fits, fit.context if fit.fits else 0))
        wanted = quant or (gguf.quant if gguf and gguf.quant else None)
        if (wanted is None and chosen is None and fit.fits) or name == wanted:
            chosen = ((name, pattern, size, exact), fit)
    if chosen is None:  # nothing fits: plan the smallest, whose problem says by how much
        smallest = min(quants, key=lambda q: q[2])
        chosen = (smallest, place(profile, smallest[2], min(requested, MIN_CONTEXT), room))
    return chosen[0], chosen[1], tuple(weighed)


def _quants(profile, gguf, sizes: dict[str, int]) -> list[Quant]:
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
