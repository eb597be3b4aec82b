"""`route eval`'s labelled prompts: a JSONL dataset (or the built-in one) read and checked line by line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsv4serve.errors import UsageError, oneline
from dsv4serve.router.profile import LEVELS

BUILTIN = "builtin"  # the name of the dataset shipped with dsv4serve


def builtin_dataset() -> Path:
    return Path(__file__).resolve().parent / "datasets" / "route-eval.jsonl"


@dataclass(frozen=True)
class Example:
    """One labelled prompt."""

    line: int
    messages: tuple[dict, ...]
    level: str  # simple | complex: what the router should make of it
    kind: str  # code, math, chat, ...: for the per-kind breakdown
    prompt_tokens: int | None = None  # the line's own token counts for the cost, when it gives them
    completion_tokens: int | None = None


def load_dataset(ref: str) -> tuple[str, list[Example]]:
    """The dataset's name and examples: a JSONL file (or `builtin`) of {"prompt" or "messages", "level",
    "kind"?, "prompt_tokens"?, "completion_tokens"?} lines."""
    path = builtin_dataset() if ref == BUILTIN else Path(ref).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise UsageError(
            f"{ref}: cannot read the dataset: {reason}", "give a JSONL file, or `builtin`"
        ) from None
    examples = [_example(path, n, text) for n, text in enumerate(lines, 1) if text.strip()]
    if not examples:
        raise UsageError(
            f"{ref}: no examples", 'one JSON object a line: {"prompt": "...", "level": "simple"}'
        )
    return ("builtin" if ref == BUILTIN else str(path)), examples


def _example(path: Path, n: int, text: str) -> Example:
    def bad(problem: str, hint: str = 'e.g. {"prompt": "Write a parser", "level": "complex"}') -> UsageError:
        return UsageError(f"{path}:{n}: {problem}", hint)

    try:
        raw = json.loads(text)
    except ValueError as err:
        raise bad(f"not JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    known = {"prompt", "messages", "level", "kind", "prompt_tokens", "completion_tokens", "note"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise bad(f"unknown field {oneline(unknown[0], 40)!r}", f"known: {', '.join(sorted(known))}")
    if "messages" in raw:
        messages = raw["messages"]
        ok = isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
        if not ok or not any(m.get("role") == "user" for m in messages):
            raise bad("messages must be a list of chat messages with a user message")
    elif isinstance(raw.get("prompt"), str) and raw["prompt"].strip():
        messages = [{"role": "user", "content": raw["prompt"]}]
    else:
        raise bad('no "prompt" (a non-empty string) or "messages"')
    level = raw.get("level")
    if level not in LEVELS:
        raise bad(
            f"level {oneline(level, 40)!r} is not simple or complex", "the level the router should give"
        )
    tokens = {}
    for name in ("prompt_tokens", "completion_tokens"):
        value = raw.get(name)
        if value is not None and (type(value) is not int or value < 0):
            raise bad(f"{name} must be a whole number of tokens")
        tokens[name] = value
    kind = raw.get("kind", "")
    return Example(n, tuple(messages), level, kind if isinstance(kind, str) else "", **tokens)
