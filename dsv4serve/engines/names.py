"""The engines by name: canonical names, what a user types to start each, other spellings.

Constants only (no engine imported), so every engine module and the layers above may use them."""

from __future__ import annotations

ENGINES = ("vllm", "llama.cpp", "transformers")
AUTO = "auto"  # vLLM where it can run the model, else llama.cpp (preflight/engine_choice.py)
ENGINE_CHOICES = (*ENGINES, AUTO)
# What a user types to start each (engines' `program`; the plan's shell line starts with it).
PROGRAMS = {
    "vllm": ("vllm", "serve"),
    "llama.cpp": ("llama-server",),
    "transformers": ("transformers", "serve"),
}
# Other spellings users type for the same engines.
ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "gguf": "llama.cpp", "hf": "transformers"}


def engine_name(text: str, where: str = "--engine") -> str:
    """An engine's canonical name (or auto) from what a user wrote; UsageError (exit 2) otherwise."""
    name = ALIASES.get(text.strip().lower(), text.strip().lower())
    if name in ENGINE_CHOICES:
        return name
    from dsv4serve.errors import UsageError, oneline

    raise UsageError(
        f"{where} {oneline(text, 60)!r}: not an engine", f"use one of: {', '.join(ENGINE_CHOICES)}"
    )
