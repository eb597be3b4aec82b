"""smoke's checks of a DeepSeek-V4 server (vLLM with --tokenizer-mode deepseek_v4): a plain answer, a
thinking answer and a tools request, each on its own, so a failure says which one.

From vLLM 0.28 the deepseek_v4 tokenizer turns thinking on by default: a request that wants a plain
answer passes chat_template_kwargs {"thinking": false}, or its few tokens may all land in `reasoning`
with `content` empty (shared/facts/vllm-versions-v4.md). Seen on 0.26 with tiny-v4 (recipes/vllm-gpu-v4):
{"thinking": true} puts the output in message.reasoning, and a tools request is accepted with the tool
schema rendered into the prompt (no call from random weights).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dsv4serve.errors import LaunchError
from dsv4serve.serving.local_http import OPENER, json_headers

PROMPT = "Say hello in five words."
THINKING_OFF = {"chat_template_kwargs": {"thinking": False}}
THINKING_ON = {"chat_template_kwargs": {"thinking": True}}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}


def deepseek_v4_chat(argv: Sequence[str]) -> bool:
    """Whether a vLLM command serves DeepSeek-V4's chat (its tokenizer mode, the last one given)."""
    mode = None
    for i, arg in enumerate(argv):
        if arg in ("--tokenizer-mode", "--tokenizer_mode") and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith(("--tokenizer-mode=", "--tokenizer_mode=")):
            mode = arg.partition("=")[2]
    return mode == "deepseek_v4"


@dataclass(frozen=True)
class Check:
    name: str  # plain | thinking | tools
    ok: bool
    detail: str  # what was seen (or why it failed)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def bodies(model: str) -> dict[str, dict]:
    """The three requests: thinking off, thinking on, and a tool offered (thinking off)."""
    base = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "min_tokens": 4}
    return {
        "plain": {**base, "max_tokens": 16, **THINKING_OFF},
        "thinking": {**base, "max_tokens": 48, **THINKING_ON},
        "tools": {
            **base,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "max_tokens": 16,
            "tools": [TOOL],
            "tool_choice": "auto",
            **THINKING_OFF,
        },
    }


def judge(name: str, answer: dict, plain_prompt_tokens: int = 0) -> Check:
    """One check's verdict from vLLM's JSON answer (pure)."""
    choices = answer.get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    usage = answer.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    content = message.get("content") or ""
    reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    if name == "plain":
        ok = bool(content.strip())
        detail = f"content {content[:60]!r}" if ok else f"empty content (reasoning {reasoning[:40]!r})"
    elif name == "thinking":
        ok = bool(reasoning.strip())
        detail = f"reasoning {reasoning[:60]!r}" if ok else "no reasoning in the answer"
    else:  # tools: accepted, and the tool's schema reached the prompt
        calls = message.get("tool_calls") or []
        ok = bool(choices) and prompt > plain_prompt_tokens
        detail = (
            f"accepted, {prompt} prompt tokens (the schema rendered), {len(calls)} tool call(s)"
            if ok
            else f"{prompt} prompt tokens, no more than without the tool: the tool schema was not rendered"
        )
    return Check(name, ok, detail, prompt, completion)


def post(base_url: str, body: dict, api_key: str | None, timeout_s: float = 120.0) -> dict:
    req = urllib.request.Request(
        base_url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=json_headers(api_key)
    )
    with OPENER.open(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def run_checks(base_url: str, model: str, api_key: str | None = None) -> list[Check]:
    """plain, thinking, tools, in that order; raises LaunchError naming the first that fails."""
    checks: list[Check] = []
    for name, body in bodies(model).items():
        try:
            answer = post(base_url, body, api_key)
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")[:300]
            raise LaunchError(
                f"smoke: the {name} check failed: HTTP {err.code}: {detail}", _hint(name)
            ) from err
        except (OSError, ValueError) as err:
            raise LaunchError(f"smoke: the {name} check failed: {err}", _hint(name)) from err
        check = judge(name, answer, checks[0].prompt_tokens if checks else 0)
        if not check.ok:
            raise LaunchError(f"smoke: the {name} check failed: {check.detail}", _hint(name))
        checks.append(check)
    return checks


def _hint(name: str) -> str:
    return {
        "plain": 'the request passed chat_template_kwargs {"thinking": false}: read the vLLM log',
        "thinking": "check --reasoning-parser deepseek_v4 and --tokenizer-mode deepseek_v4 in the vLLM log",
        "tools": "check --tool-call-parser deepseek_v4 and --enable-auto-tool-choice in the vLLM log",
    }[name]


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
