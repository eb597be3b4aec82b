"""A profile's engine fields: serve.engine, and model.gguf (llama.cpp's repo and quants)."""

from __future__ import annotations

import re
from typing import Any

from dsv4serve.engines.base import ALIASES, ENGINE_CHOICES
from dsv4serve.errors import oneline
from dsv4serve.profiles.hub_names import valid_repo_id, valid_revision

_QUANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_engine_fields(need: Any, profile: Any) -> None:
    """serve.engine names an engine; model.gguf's repo, quants and default quant are usable."""
    engine = profile.serve.engine
    need(
        engine is None or ALIASES.get(engine, engine) in ENGINE_CHOICES,
        ("serve", "engine"),
        f"{oneline(engine or '', 60)!r} is not an engine",
        f"use one of {', '.join(ENGINE_CHOICES)}",
    )
    gguf = profile.model.gguf
    if gguf is None:
        return
    at = ("model", "gguf")
    need(
        gguf.repo is None or valid_repo_id(gguf.repo),
        (*at, "repo"),
        f"{oneline(gguf.repo or '', 100)!r} is not a hub repo id (owner/name)",
        "e.g. unsloth/DeepSeek-V4-Flash-GGUF",
    )
    need(
        not gguf.revision or (bool(gguf.repo) and valid_revision(gguf.revision)),
        (*at, "revision"),
        "revision needs model.gguf.repo and must be a branch, tag or commit",
        "e.g. main or a 40-character commit",
    )
    need(
        not gguf.repo or bool(gguf.quants),
        (*at, "quants"),
        "a GGUF repo needs at least one quant",
        "add quants: [{name: UD-Q4_K_XL, pattern: '*UD-Q4_K_XL*.gguf', bytes: ...}]",
    )
    names = [q.name for q in gguf.quants]
    for i, quant in enumerate(gguf.quants):
        need(
            _QUANT_NAME.fullmatch(quant.name) is not None,
            (*at, "quants", i, "name"),
            f"{oneline(quant.name, 60)!r} is not a quant name",
            "letters, digits and . _ + - (e.g. UD-Q4_K_XL)",
        )
        need(names.count(quant.name) == 1, (*at, "quants", i, "name"), "named twice", "name each quant once")
        need(
            bool(quant.pattern.strip()) and quant.pattern.endswith(".gguf"),
            (*at, "quants", i, "pattern"),
            f"{oneline(quant.pattern, 60)!r} does not match GGUF files",
            "a glob ending in .gguf, e.g. '*UD-Q4_K_XL*.gguf'",
        )
    need(
        gguf.quant is None or gguf.quant in names,
        (*at, "quant"),
        f"{oneline(gguf.quant or '', 60)!r} is not one of the quants",
        f"use one of {', '.join(names) or '(none given)'}",
    )
