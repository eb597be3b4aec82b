"""Speculative decoding, planned (pure): --spec off|mtp|dspark and --spec-tokens K against the draft the
checkpoint carries, the weights vLLM loads (the draft's `mtp.*` tensors only when on), the draft's KV
layers, and what the recipes and vLLM's issues say about it (shared/facts/vllm-versions-v4.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from dsv4serve.errors import UsageError
from dsv4serve.hardware.inventory import Gpu, capability_key, gib
from dsv4serve.profiles.types import SPEC_CHOICES, Profile

MAX_SPEC_TOKENS = 32  # far above any recipe's (MTP 1-2, DSpark 5-7)
SHOWN = {"mtp": "MTP", "dspark": "DSpark"}


@dataclass(frozen=True)
class SpecChoice:
    """What the plan serves: the method (off, mtp, dspark), K, and the draft's share of the memory."""

    method: str = "off"
    tokens: int = 0  # num_speculative_tokens (0 when off)
    draft_layers: int = 0  # KV layers the draft adds (0 when off)
    draft_weights_bytes: int = 0  # the draft's tensors; 0 = not known offline (or no draft)
    draft_known: bool = True  # False: the checkpoint has a draft whose size is not known offline
    why: str = ""  # where K came from
    notes: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return self.method != "off"

    def config_json(self) -> str:
        """vLLM's --speculative-config (the recipes' forms: DSpark samples its draft probabilistically)."""
        config: dict[str, object] = {"method": self.method, "num_speculative_tokens": self.tokens}
        if self.method == "dspark":
            config["draft_sample_method"] = "probabilistic"
        return json.dumps(config, separators=(",", ":"))


def check_spec(method: str | None, tokens: int | None) -> None:
    """--spec and --spec-tokens as given (before any profile is read)."""
    if method is not None and method not in SPEC_CHOICES:
        raise UsageError(f"--spec {method!r}: unknown method", f"use one of {', '.join(SPEC_CHOICES)}")
    if tokens is not None and not 1 <= tokens <= MAX_SPEC_TOKENS:
        raise UsageError(
            f"--spec-tokens {tokens}: draft tokens per step must be 1 to {MAX_SPEC_TOKENS}",
            "the recipes: 1 or 2 for MTP; for DSpark the checkpoint's dspark_block_size (5 on Flash-0731)",
        )


def resolve_spec(
    profile: Profile, method: str | None, tokens: int | None, gpus: tuple[Gpu, ...]
) -> SpecChoice:
    """The speculative decoding a plan serves: the option, else the profile's default, else off."""
    check_spec(method, tokens)
    method = method or profile.serve.speculative or "off"
    draft = profile.model.draft
    if method == "off":
        notes = ()
        if draft is not None:
            if draft.weights_bytes:
                notes = (
                    f"speculative decoding off: vLLM does not load the {SHOWN[draft.method]} draft's "
                    f"{gib(draft.weights_bytes, 2)} (mtp.*), and the plan does not count them; "
                    f"--spec {draft.method} turns it on",
                )
            else:
                notes = (
                    f"speculative decoding off: vLLM does not load the {SHOWN[draft.method]} draft (mtp.*), "
                    f"but its share of the {gib(profile.model.weights_bytes, 2)} is not known offline: "
                    f"the plan counts it; --spec {draft.method} turns it on",
                )
        return SpecChoice(draft_known=draft is None or bool(draft.weights_bytes), notes=notes)
    if draft is None:
        raise UsageError(
            f"--spec {method}: {profile.name}'s checkpoint carries no speculative-decoding draft",
            "use --spec off, or a profile whose checkpoint has one (profiles list: the draft column)",
        )
    if draft.method != method:
        other = {
            "mtp": "an MTP head: flash-preview, pro-preview or the NVFP4 ones",
            "dspark": "DSpark: flash, pro",
        }
        raise UsageError(
            f"--spec {method}: {profile.name} ({profile.model.variant or 'this checkpoint'}) carries a "
            f"{draft.method} draft, not {method}",
            f"use --spec {draft.method}, or a profile with {other[method]}",
        )
    hopper = bool(gpus) and all(capability_key(g.compute_capability) < capability_key("10.0") for g in gpus)
    if tokens is not None:
        k, why = tokens, "--spec-tokens"
    elif profile.serve.speculative_tokens:
        k, why = profile.serve.speculative_tokens, "the profile's serve.speculative_tokens"
    elif method == "mtp":
        k = draft.tokens_hopper if hopper and draft.tokens_hopper else draft.tokens or 1
        why = "the recipes' on Hopper" if hopper and draft.tokens_hopper else "the recipes'"
    else:
        k = draft.tokens or draft.block_size
        why = "the checkpoint's dspark_block_size"
        if not k:
            raise UsageError(
                f"--spec dspark on {profile.name}: its dspark_block_size (the default K) is not known "
                "offline",
                "give --spec-tokens K: the config's dspark_block_size (on Flash-0731 K=5 gave 34.7% "
                "acceptance, the recipes' K=7 4.4%)",
            )
    notes = [_spec_note(method, k, why)]
    if method == "dspark" and k > 5:
        notes.append(f"DSpark K={k}: on Flash-0731 K=7 gave 4.4% draft acceptance, K=5 34.7% (the facts)")
    if method == "dspark" and hopper:
        notes.append(
            "DSpark on Hopper: adaptive verification is broken on SM90 (vllm issue 54011) and CUDA-graph "
            "capture failed on H100 (51181); the profiles' --enforce-eager avoids the second"
        )
    if not draft.weights_bytes:
        notes.append(
            f"the {method} draft's size is not known offline: it is inside the weights already counted"
        )
    return SpecChoice(
        method,
        k,
        draft.layers,
        draft.weights_bytes,
        draft_known=bool(draft.weights_bytes),
        why=why,
        notes=tuple(notes),
    )


def _spec_note(method: str, k: int, why: str) -> str:
    return f"speculative decoding: {method}, {k} draft token{'s' if k > 1 else ''} per step ({why})"


def served_profile(profile: Profile, spec: SpecChoice) -> Profile:
    """The profile with the weights vLLM loads: without a known draft's tensors when it is off."""
    draft = profile.model.draft
    if spec.on or draft is None or not draft.weights_bytes:
        return profile
    model = dataclasses.replace(
        profile.model, weights_bytes=profile.model.weights_bytes - draft.weights_bytes
    )
    return dataclasses.replace(profile, model=model)
