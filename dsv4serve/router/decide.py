"""The routing decision without I/O: the text a request is judged by, rules, the classifier's request
body and the reading of its answer."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from dsv4serve.router.profile import LEVELS, ROUTES, Classifier, RouterProfile, Rule

# Reasons a request ends where it does (the x-dsv4serve-route-reason header and the metrics label).
CLASSIFIED = {"simple": "classified-simple", "complex": "classified-complex"}
PARSE_ERROR = "parse-error"  # the classifier answered, but not one of the levels
TIMEOUT = "timeout"  # the classifier did not answer within classifier.timeout_s
CLASSIFIER_ERROR = "classifier-error"  # the classifier call failed (HTTP error, connection refused)
PRO_UNAVAILABLE = "pro-unavailable"  # Pro was chosen but could not be reached
SESSION = "session"  # the conversation's model (x-session-id, or its first system and user messages)
HEADER = "header"  # the client's x-dsv4serve-tier
CONTEXT = "context-window"  # the request fits only one model's max_model_len
TIER_HEADER = "x-dsv4serve-tier"
# Reasons a conversation remembers: a fallback (the classifier failed, Pro was down) is not its model.
REMEMBERED = (*CLASSIFIED.values(), HEADER, CONTEXT)
TOP_LOGPROBS = 10  # alternatives per answer token, for the classifier's confidence
# Tokens a chat template may add around the messages (role markers, a default system prompt).
TEMPLATE_TOKENS = 256
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
    p_complex: float | None = None  # the classifier's confidence, from its logprobs


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


def is_tool_result(body: dict, endpoint: str) -> bool:
    """A chat turn that hands tool results back: its model must be the one that called the tools."""
    messages = body.get("messages") if endpoint == "chat" else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    return messages[-1].get("role") in ("tool", "function")


def requested_tier(value: str | None) -> str | None:
    """The x-dsv4serve-tier header: flash, pro, or absent; anything else is the client's mistake."""
    if value is None:
        return None
    tier = value.strip().lower()
    if tier not in ROUTES:
        raise ValueError(f"{TIER_HEADER}: {value!r:.40} is not flash or pro")
    return tier


def output_tokens(body: dict) -> int:
    """The tokens a request asks to generate (max_tokens), 1 when it leaves that to the server."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = _int(body.get(name))
        if value > 0:
            return value
    return 1


def token_bound(size: int) -> int:
    """At most this many prompt tokens, from the request body's size in bytes: a byte-level BPE token
    holds at least one byte of text, and the JSON around the text is longer than the template's markers."""
    return size + TEMPLATE_TOKENS


def tokenize_body(body: dict, endpoint: str, model: str) -> dict | None:
    """vLLM's /tokenize request counting the request's prompt as the model will see it, or None."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        out = {"model": model, "messages": messages}
        for key in ("tools", "chat_template_kwargs"):
            if body.get(key):
                out[key] = body[key]
        return out
    prompt = body.get("prompt")
    return {"model": model, "prompt": prompt} if isinstance(prompt, str) else None


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
        # The answer's token alternatives give P(complex): a threshold instead of the bare label.
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
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


def complex_probability(answer: Any, level: str) -> float | None:
    """P(complex) from the logprobs of the answer's token where the level begins: the alternatives there
    that spell "complex" against those that spell "simple" (structured output masks every other token,
    so they are all there is). None when the answer carries no logprobs."""
    try:
        content = answer["choices"][0]["message"]["content"]
        tokens = answer["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, str) or not isinstance(tokens, list):
        return None
    start = content.rfind(level)
    if start < 0:
        return None
    before = ""
    for token in tokens:
        text = token.get("token") if isinstance(token, dict) else None
        if not isinstance(text, str):
            return None
        if len(before) + len(text) > start:  # this token holds the level's first character
            mass = {"simple": 0.0, "complex": 0.0}
            for alt in token.get("top_logprobs") or [token]:
                word = _spelled(before + str(alt.get("token", "")), content[:start])
                logprob = alt.get("logprob")
                if word and isinstance(logprob, (int, float)) and logprob > -1000:  # vLLM's -9999: masked
                    mass[word] += math.exp(logprob)
            total = mass["simple"] + mass["complex"]
            return round(mass["complex"] / total, 6) if total > 0 else None
        before += text
    return None


def _spelled(text: str, prefix: str) -> str | None:
    """The level a candidate answer text begins to spell after `prefix`, if any."""
    if not text.startswith(prefix) or len(text) <= len(prefix):
        return None
    rest = text[len(prefix) :]
    for word in LEVELS:
        if word.startswith(rest) or rest.startswith(word):
            return word
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
