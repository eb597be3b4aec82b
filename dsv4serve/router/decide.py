"""The routing decision without I/O: the text a request is judged by, rules, the classifier's request
body and the reading of its answer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from dsv4serve.router.profile import LEVELS, Classifier, RouterProfile, Rule

# Reasons a request ends where it does (the x-dsv4serve-route-reason header and the metrics label).
CLASSIFIED = {"simple": "classified-simple", "complex": "classified-complex"}
PARSE_ERROR = "parse-error"  # the classifier answered, but not one of the levels
TIMEOUT = "timeout"  # the classifier did not answer within classifier.timeout_s
CLASSIFIER_ERROR = "classifier-error"  # the classifier call failed (HTTP error, connection refused)
PRO_UNAVAILABLE = "pro-unavailable"  # Pro was chosen but could not be reached
LEVEL_SCHEMA = {
    "type": "object",
    "properties": {"level": {"type": "string", "enum": list(LEVELS)}},
    "required": ["level"],
    "additionalProperties": False,
}
COMPACT_JSON_REGEX = r'\{"level":"(' + "|".join(LEVELS) + r')"\}'


@dataclass(frozen=True)
class Decision:
    """Where a request goes, why, and what the classifier call cost (0 when none was made)."""

    route: str  # flash | pro
    reason: str
    detail: str = ""  # for parse errors and failures: what came back (never sent to clients' upstreams)
    classifier_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def to_flash(decision: Decision, detail: str) -> Decision:
    """Pro was chosen but cannot answer: Flash answers, and the reason says so."""
    return dataclasses.replace(decision, route="flash", reason=PRO_UNAVAILABLE, detail=detail)


class ParseFailure(Exception):
    """The classifier's answer is not one of the levels."""


def _content_text(content: Any) -> str:
    """Text of a chat message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def request_text(body: dict, endpoint: str) -> str:
    """What a request is judged by: the last user message (chat), or the prompt (completions)."""
    if endpoint == "chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    return _content_text(message.get("content"))
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts, or token ids: judge by the first text one
        prompt = next((p for p in prompt if isinstance(p, str)), "")
    return prompt if isinstance(prompt, str) else ""


def matching_rule(profile: RouterProfile, body: dict, endpoint: str, text: str) -> Rule | None:
    """The first rule whose conditions all hold, or None (then the classifier decides)."""
    lowered = text.lower()
    for rule in profile.rules:
        w = rule.when
        if w.tools is not None and bool(body.get("tools")) != w.tools:
            continue
        if w.endpoint is not None and w.endpoint != endpoint:
            continue
        if w.min_chars is not None and len(text) < w.min_chars:
            continue
        if w.max_chars is not None and len(text) > w.max_chars:
            continue
        if w.contains and not any(s.lower() in lowered for s in w.contains):
            continue
        return rule
    return None


def clip(text: str, limit: int) -> str:
    """At most `limit` characters: the head and the tail, where the task is usually stated."""
    if len(text) <= limit:
        return text
    head = limit // 2
    return text[:head] + "\n[...]\n" + text[len(text) - (limit - head) :]


def classifier_body(classifier: Classifier, model: str, text: str) -> dict:
    """The chat completion that asks Flash for the level, constrained by vLLM's structured output."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": classifier.prompt},
            {"role": "user", "content": clip(text, classifier.max_input_chars)},
        ],
        "temperature": 0,  # the same request is routed the same way
        "max_tokens": classifier.max_tokens,
        "stream": False,
        # DeepSeek-V4's template thinks only when asked; thinking tokens would eat the small budget.
        "chat_template_kwargs": {"thinking": False},
    }
    if classifier.method == "choice":
        body["structured_outputs"] = {"choice": list(LEVELS)}
    elif classifier.method == "json_schema":
        # OpenAI's form. vLLM lets whitespace through between JSON tokens (its switch for that is
        # server-wide), so a weak model can spend the whole budget on it: a parse error, then Flash.
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "route_level", "schema": LEVEL_SCHEMA, "strict": True},
        }
    else:  # compact_json: exactly the schema's two compact answers, ~20 tokens even byte by byte
        body["structured_outputs"] = {"regex": COMPACT_JSON_REGEX}
    return body


def usage(answer: Any) -> tuple[int, int]:
    """Prompt and completion tokens of a chat completion response (0 where it does not say)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def parse_level(method: str, answer: Any) -> str:
    """The level a chat completion response answers, or ParseFailure."""
    try:
        content = answer["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ParseFailure(f"not a chat completion: {json.dumps(answer)[:200]}") from None
    if not isinstance(content, str):
        raise ParseFailure(f"content is not text: {content!r:.200}")
    if method == "choice":
        level = content.strip().strip('"')
    else:
        try:
            level = json.loads(content).get("level")
        except (ValueError, AttributeError):
            raise ParseFailure(f"not a JSON object: {content!r:.200}") from None
    if level not in LEVELS:
        raise ParseFailure(f"level {level!r:.100} is not one of {', '.join(LEVELS)}")
    return level


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
