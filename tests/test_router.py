"""Router profiles (file:line errors, where they live) and the routing decision without I/O.

The proxy is tested in tests/test_router_proxy.py, and between two real vLLM servers in
tests/test_router_live.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from dsv4serve.errors import ProfileError, UsageError
from dsv4serve.router import decide
from dsv4serve.router.profile import MIN_CLASSIFIER_TOKENS, load_router_profile
from dsv4serve.router.upstreams import Upstream, base_url, read_key

# -- router profiles ---------------------------------------------------------------------------------


def test_the_builtin_profile_is_the_articles_rule():
    p = load_router_profile("default")
    assert "code generation" in p.classifier.prompt and "logical calculation" in p.classifier.prompt
    assert p.classifier.method == "compact_json"
    assert [(r.name, r.route, r.when.tools) for r in p.rules] == [("tools", "pro", True)]


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


GOOD = "classifier:\n  prompt: classify\n"


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        ("classifier:\n  promt: x\n", "r.yaml:2: classifier.promt: unknown field", "did you mean prompt?"),
        ("name: r\n", "r.yaml:1: classifier: missing required field", "add `classifier:`"),
        (GOOD + "  max_tokens: lots\n", "r.yaml:3: classifier.max_tokens: expected an integer", "whole"),
        (GOOD + "  max_tokens: 8\n", "r.yaml:3: classifier.max_tokens: 8 is too few", "at least"),
        (GOOD + "  method: regex\n", "r.yaml:3: classifier.method: 'regex' is not a method", "compact_json"),
        (GOOD + "  timeout_s: 0\n", "r.yaml:3: classifier.timeout_s: must be positive", "seconds"),
        ("classifier:\n  prompt: '  '\n", "r.yaml:2: classifier.prompt: must not be empty", "simple"),
        (GOOD + "timeouts: {read_s: -1}\n", "r.yaml:3: timeouts.read_s: must not be negative", ""),
        (
            GOOD + "rules:\n  - {name: a, route: gpu, when: {tools: true}}\n",
            "r.yaml:4: rules[0].route",
            "flash",
        ),
        (GOOD + "rules:\n  - {name: a, route: pro, when: {}}\n", "r.yaml:4: rules[0].when: no condition", ""),
        (GOOD + "rules:\n  - {name: a, route: pro}\n", "r.yaml:4: rules[0].when: missing required", ""),
        (
            GOOD + "rules:\n  - {name: a, route: pro, when: {tools: true}}\n"
            "  - {name: a, route: flash, when: {min_chars: 1}}\n",
            "r.yaml:5: rules[1].name: duplicate rule name",
            "",
        ),
        (
            GOOD + "rules:\n  - {name: A B, route: pro, when: {tools: true}}\n",
            "r.yaml:4: rules[0].name",
            "lower",
        ),
        (
            GOOD + "rules:\n  - name: a\n    route: pro\n    when: {min_chars: 9, max_chars: 2}\n",
            "r.yaml:6: rules[0].when.max_chars: 2 is below min_chars",
            "",
        ),
        (
            GOOD + "rules:\n  - {name: a, route: pro, when: {contains: ['']}}\n",
            "r.yaml:4: rules[0].when.contains",
            "",
        ),
        (
            GOOD + "rules:\n  - {name: a, route: pro, when: {endpoint: x}}\n",
            "r.yaml:4: rules[0].when.endpoint",
            "chat",
        ),
        ("classifier: [\n", "r.yaml:2: invalid YAML", "syntax"),
    ],
)
def test_bad_router_profiles_name_file_line_and_field(tmp_path, text, where, hint):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        load_router_profile(str(path))
    assert f"{tmp_path}/{where}" in err.value.message
    assert hint in err.value.hint
    assert err.value.exit_code == 2


def test_a_minimal_profile_takes_the_defaults(tmp_path):
    p = load_router_profile(str(write(tmp_path, GOOD)))
    assert p.name == "r" and p.rules == () and p.classifier.max_tokens >= MIN_CLASSIFIER_TOKENS


def test_router_profiles_by_name_from_the_user_dir_and_not_among_model_profiles(tmp_path, run_cli):
    user = tmp_path / "home" / ".config" / "dsv4serve" / "router"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("classifier: {prompt: mine}\n")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "home" / ".config")  # isolated_home restores it
    assert load_router_profile("mine").classifier.prompt == "mine"
    with pytest.raises(ProfileError, match="router profile 'nope' not found") as err:
        load_router_profile("nope")
    assert "default" in err.value.hint and "mine" in err.value.hint
    listed = run_cli("profiles", "list", "--json")
    names = {p["name"] for p in json.loads(listed.stdout)["profiles"]}
    assert {"flash", "pro", "tiny"} <= names and not names & {"default", "mine"}


def test_the_cli_reports_a_bad_router_profile_with_its_line(tmp_path, run_cli):
    path = write(tmp_path, GOOD + "  max_tokens: 8\n")
    result = run_cli("route", str(path), "--flash", "http://127.0.0.1:1", "--pro", "http://127.0.0.1:2")
    assert result.exit_code == 2
    assert f"error: {path}:3: classifier.max_tokens: 8 is too few" in result.stderr


# -- the decision without I/O -------------------------------------------------------------------------


def test_request_text_is_the_last_user_message_or_the_prompt():
    body = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
        ]
    }
    assert decide.request_text(body, "chat") == "a"
    assert decide.request_text({"prompt": "p"}, "completions") == "p"
    assert decide.request_text({"prompt": [[1, 2], "q"]}, "completions") == "q"
    assert decide.request_text({"messages": "junk"}, "chat") == ""


def test_rules_match_in_order_on_every_condition(tmp_path):
    p = load_router_profile(
        str(
            write(
                tmp_path,
                GOOD
                + "rules:\n"
                + "  - {name: tools, route: pro, when: {tools: true}}\n"
                + "  - {name: code, route: pro, when: {contains: [DEF ], endpoint: completions}}\n"
                + "  - {name: short, route: flash, when: {max_chars: 5}}\n",
            )
        )
    )
    rule = decide.matching_rule
    assert rule(p, {"tools": [{"type": "function"}]}, "chat", "hello world").name == "tools"
    assert rule(p, {"tools": []}, "chat", "hello world") is None
    assert rule(p, {}, "completions", "def f(): pass").name == "code"
    assert rule(p, {}, "chat", "def f(): pass") is None  # code is for completions only
    assert rule(p, {}, "chat", "hey").name == "short"


@pytest.mark.parametrize(
    ("method", "content", "level"),
    [
        ("compact_json", '{"level":"complex"}', "complex"),
        ("json_schema", '{ "level" : "simple" }', "simple"),
        ("choice", "complex", "complex"),
        ("compact_json", '{"level":"medium"}', None),
        ("compact_json", '{"level":', None),
        ("compact_json", "[1]", None),
        ("choice", "maybe", None),
    ],
)
def test_parse_level(method, content, level):
    answer = {"choices": [{"message": {"content": content}}], "usage": {"prompt_tokens": 9}}
    if level is None:
        with pytest.raises(decide.ParseFailure):
            decide.parse_level(method, answer)
    else:
        assert decide.parse_level(method, answer) == level
    assert decide.usage(answer) == (9, 0)


def test_classifier_request_is_constrained_bounded_and_deterministic():
    c = load_router_profile().classifier
    body = decide.classifier_body(c, "flash-model", "x" * 20000)
    assert body["temperature"] == 0 and body["max_tokens"] == c.max_tokens and body["stream"] is False
    assert body["structured_outputs"] == {"regex": decide.COMPACT_JSON_REGEX}
    assert len(body["messages"][1]["content"]) <= c.max_input_chars + 10
    schema_body = decide.classifier_body(dataclasses.replace(c, method="json_schema"), "m", "t")
    assert schema_body["response_format"]["json_schema"]["schema"] == decide.LEVEL_SCHEMA
    assert "structured_outputs" not in schema_body  # vLLM refuses both at once
    choice = decide.classifier_body(dataclasses.replace(c, method="choice"), "m", "t")
    assert choice["structured_outputs"] == {"choice": ["simple", "complex"]}


def test_upstream_urls_and_keys(tmp_path, monkeypatch):
    assert base_url("flash", "http://h:1/v1/") == "http://h:1"
    assert base_url("pro", "https://h/x") == "https://h/x"
    with pytest.raises(UsageError, match="not an http"):
        base_url("pro", "h:1")
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    assert read_key("flash", str(key)) == "sk-file"
    monkeypatch.setenv("DSV4SERVE_PRO_API_KEY", "sk-env")
    assert read_key("pro", None) == "sk-env"
    assert read_key("flash", None) is None
    key.write_text("two words\n")
    with pytest.raises(UsageError) as err:
        read_key("flash", str(key))
    assert "two" not in err.value.message + err.value.hint  # the content is never shown
    assert "sk-file" not in repr(Upstream("flash", "http://h", api_key="sk-file"))
