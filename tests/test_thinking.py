"""Thinking on by default (vLLM 0.28+ with --tokenizer-mode deepseek_v4): smoke's plain / thinking / tools
checks, each named when it fails; up's curl line asks for a plain answer; the plan's Think Max note."""

from __future__ import annotations

import json
import shlex
import socket

import pytest

from dsv4serve.errors import LaunchError
from dsv4serve.hardware.inventory import parse_hardware
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile
from dsv4serve.serving.chat import curl_line
from dsv4serve.serving.checks import bodies, deepseek_v4_chat, judge, run_checks


def test_the_checks_requests():
    b = bodies("m")
    assert b["plain"]["chat_template_kwargs"] == {"thinking": False}
    assert b["thinking"]["chat_template_kwargs"] == {"thinking": True}
    assert b["tools"]["tools"][0]["function"]["name"] == "get_weather" and b["tools"]["tool_choice"] == "auto"
    assert b["tools"]["chat_template_kwargs"] == {"thinking": False}


def _answer(content="", reasoning="", prompt=20, calls=()):
    message = {"role": "assistant", "content": content, "reasoning": reasoning, "tool_calls": list(calls)}
    return {"choices": [{"message": message}], "usage": {"prompt_tokens": prompt, "completion_tokens": 4}}


def test_a_plain_answer_needs_content_not_only_reasoning():
    assert judge("plain", _answer(content="Hello there")).ok
    failed = judge("plain", _answer(reasoning="let me think"))  # 0.28+ thinking by default, ignored kwargs
    assert not failed.ok and "empty content" in failed.detail


def test_a_thinking_answer_needs_reasoning():
    assert judge("thinking", _answer(reasoning="so...")).ok
    assert not judge("thinking", _answer(content="Hello")).ok


def test_a_tools_request_must_render_the_schema():
    assert judge("tools", _answer(prompt=616), plain_prompt_tokens=20).ok  # recipes: 616 prompt tokens
    assert not judge("tools", _answer(prompt=20), plain_prompt_tokens=20).ok


def test_only_deepseek_v4s_tokenizer_gets_the_checks():
    assert deepseek_v4_chat(["serve", "m", "--tokenizer-mode", "deepseek_v4"])
    assert deepseek_v4_chat(["serve", "m", "--tokenizer_mode=deepseek_v4"])
    assert not deepseek_v4_chat(["serve", "m", "--tokenizer-mode", "deepseek_v4", "--tokenizer-mode", "auto"])
    assert not deepseek_v4_chat(["serve", "m"])


def test_ups_curl_asks_for_a_plain_answer_on_v4():
    body = json.loads(
        shlex.split(curl_line("http://127.0.0.1:8000", "deepseek-v4-flash", thinking_off=True))[-1]
    )
    assert body["chat_template_kwargs"] == {"thinking": False}
    assert "chat_template_kwargs" not in json.loads(shlex.split(curl_line("http://h", "tiny"))[-1])


def test_a_server_that_does_not_answer_names_the_plain_check():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LaunchError, match="the plain check failed"):
        run_checks(f"http://127.0.0.1:{port}", "m")


@pytest.mark.parametrize(
    ("name", "length", "truncated"), [("pro", None, True), ("flash", None, False), ("flash", 262_144, True)]
)
def test_think_max_truncation_is_noted_below_393216(name, length, truncated):
    p = make_plan(
        load_profile(name),
        parse_hardware("8xH200").gpus,
        Overrides(max_model_len=length, vllm_version="0.32"),
    )
    said = [n for n in p.notes if "Think Max" in n]
    assert bool(said) is truncated
    if said:
        assert f"max_model_len {p.max_model_len:,} is below the 393,216 tokens" in said[0]


@pytest.mark.parametrize(("version", "said"), [("0.27", False), ("0.28", True), ("0.33", True)])
def test_the_thinking_default_is_noted_from_0_28(version, said):
    p = make_plan(load_profile("flash"), parse_hardware("2xH200").gpus, Overrides(vllm_version=version))
    assert any('chat_template_kwargs {"thinking": false}' in n for n in p.notes) is said
    tiny = make_plan(load_profile("tiny"), parse_hardware("1xL40S").gpus, Overrides(model_location="/m"))
    assert not any("Think Max" in n or "thinks by default" in n for n in tiny.notes)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_server_without_the_v4_reasoning_parser_fails_the_thinking_check_by_name():
    """The real vLLM CPU build serving tiny (no deepseek_v4 tokenizer, no reasoning parser): the plain
    check passes (its chat template ignores the kwargs), the thinking check fails, and says so."""
    from dsv4serve.serving.launch import running_server
    from dsv4serve.serving.prepare import prepare_launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, spec = prepare_launch("tiny", port=port, progress=False)
    with running_server(spec, lambda event: None) as server, pytest.raises(LaunchError) as err:
        run_checks(server.base_url, spec.served_model_name)
    assert "the thinking check failed: no reasoning in the answer" in err.value.message
    assert "--reasoning-parser deepseek_v4" in err.value.hint
