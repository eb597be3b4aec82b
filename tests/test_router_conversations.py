"""The router for real conversations (issue 24): sessions (in one process and across two workers), the
parallel mode, the knobs (x-dsv4serve-tier, a confidence threshold, the context window), the clients'
key, and `route eval`, against the real local HTTP servers of tests/router_servers.py."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from dsv4serve.router import eval_dataset
from dsv4serve.router.profile import load_router_profile
from dsv4serve.router.sessions import SessionStore, session_key
from dsv4serve.router.upstreams import Upstream
from tests.router_servers import RouterThread, fake_pair, free_port, read_ready

CLIENT = httpx.Client(trust_env=False, timeout=30)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]


def profile(mode: str = "classify-first", **sections):
    base = load_router_profile()
    classifier = dataclasses.replace(base.classifier, **sections.pop("classifier", {}))
    sessions = dataclasses.replace(base.sessions, **sections.pop("sessions", {}))
    return dataclasses.replace(base, mode=mode, classifier=classifier, sessions=sessions, **sections)


@pytest.fixture
def pair():
    yield from fake_pair()


@pytest.fixture
def start_router():
    started = []

    def start(flash, pro, prof=None, api_key=None):
        routers = RouterThread(
            prof or profile(), Upstream("flash", flash.url), Upstream("pro", pro.url), api_key
        )
        started.append(routers)
        return routers

    yield start
    for router in started:
        router.stop()


def turns(*users: str, system: str = "be brief", tool_result: bool = False) -> list[dict]:
    """A conversation: the system message, then user turns each answered by the assistant."""
    messages = [{"role": "system", "content": system}]
    for i, text in enumerate(users):
        if i:
            messages.append({"role": "assistant", "content": f"answer {i}"})
        messages.append({"role": "user", "content": text})
    if tool_result:
        messages.append(
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function"}]}
        )
        messages.append({"role": "tool", "tool_call_id": "c1", "content": "42"})
    return messages


def ask(url: str, messages: list[dict], headers: dict | None = None, **extra) -> tuple[str, str]:
    with httpx.Client(trust_env=False, timeout=30) as client:  # a connection of its own each time
        resp = client.post(
            url + "/v1/chat/completions",
            json={"model": "auto", "messages": messages, **extra},
            headers=headers,
        )
    assert resp.status_code == 200, resp.text
    return resp.headers["x-dsv4serve-route"], resp.headers["x-dsv4serve-route-reason"]


# -- sessions ---------------------------------------------------------------------------------------------


def test_a_conversation_is_classified_once_and_only_escalates(pair, start_router):
    flash, pro = pair
    router = start_router(flash, pro)
    flash.level = "simple"
    assert ask(router.url, turns("hi")) == ("flash", "classified-simple")
    flash.level = "complex"  # a fresh classification would now say Pro: the conversation keeps Flash
    assert ask(router.url, turns("hi", "write me a compiler")) == ("flash", "session")
    assert ask(router.url, turns("hi", "go on", tool_result=True)) == ("flash", "session")
    assert len(flash.classifier_calls()) == 1
    # A rule escalates it; from then on it stays Pro, tools or not, tool results included.
    assert ask(router.url, turns("hi", "use the tool"), tools=TOOLS) == ("pro", "rule:tools")
    flash.level = "simple"
    assert ask(router.url, turns("hi", "thanks")) == ("pro", "session")
    assert ask(router.url, turns("hi", "thanks", tool_result=True), tools=TOOLS) == ("pro", "session")
    assert len(flash.classifier_calls()) == 1
    # The same opening in another conversation (x-session-id) is classified on its own; x-dsv4serve-tier
    # overrides one request, and `pro` escalates the conversation.
    other = {"x-session-id": "user-2"}
    assert ask(router.url, turns("hi"), other) == ("flash", "classified-simple")
    assert ask(router.url, turns("hi", "now"), {**other, "x-dsv4serve-tier": "pro"}) == ("pro", "header")
    assert ask(router.url, turns("hi", "next"), other) == ("pro", "session")
    assert ask(router.url, turns("hi", "next"), {**other, "x-dsv4serve-tier": "flash"}) == ("flash", "header")
    assert len(flash.classifier_calls()) == 2
    bad = CLIENT.post(
        router.url + "/v1/chat/completions",
        json={"model": "auto", "messages": turns("hi")},
        headers={"x-dsv4serve-tier": "gpu"},
    )
    assert bad.status_code == 400 and "x-dsv4serve-tier" in bad.json()["error"]["message"]
    assert router.metric("dsv4serve_route_requests_total", route="pro", reason="session") == 3


def test_sessions_forget_the_idle_and_evict_the_oldest_beyond_the_cap():
    store = SessionStore(None, idle_s=100, max_sessions=3)
    for i, key in enumerate("abc"):
        store.escalate(key, "flash", now=1000 + i)
    assert store.escalate("a", "pro", now=1010) == ("pro", 0)  # a escalates, and is seen at 1010
    assert store.escalate("a", "flash", now=1011) == ("pro", 0)  # never down
    assert store.escalate("d", "flash", now=1012) == ("flash", 1)  # b (seen last at 1001) goes
    assert [store.get(k, now=1013) for k in "abcd"] == ["pro", None, "flash", "flash"]
    assert len(store) == 3
    assert store.get("a", now=1013 + 100.5) is None  # idle for more than idle_s
    assert store.escalate("e", "flash", now=1200) == ("flash", 0)  # the idle are dropped, not evicted
    assert len(store) == 1
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    later = {
        "messages": [
            *body["messages"],
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": "v"},
        ]
    }
    assert (
        session_key(body, "chat", None) == session_key(later, "chat", None) != session_key(body, "chat", "id")
    )
    assert session_key({"prompt": "u"}, "completions", None) is None


def test_two_workers_keep_one_conversation_on_one_model(pair, tmp_path):
    flash, pro = pair
    port = free_port()
    argv = [sys.executable, "-m", "dsv4serve", "route", "--flash", flash.url, "--pro", pro.url]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--workers", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert read_ready(proc)["workers"] == 2
        flash.level = "simple"
        assert ask(url, turns("plan my day")) == ("flash", "classified-simple")
        flash.level = "complex"  # a worker deciding on its own would now send the conversation to Pro
        followups = [ask(url, turns("plan my day", f"and then {i}")) for i in range(16)]
        assert followups == [("flash", "session")] * 16
        assert ask(url, turns("plan my day", "call the tool"), tools=TOOLS) == ("pro", "rule:tools")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            after = list(pool.map(lambda i: ask(url, turns("plan my day", f"then {i}")), range(16)))
        assert after == [("pro", "session")] * 16
        assert len(flash.classifier_calls()) == 1  # once for the conversation, by whichever worker
        (metrics_dir,) = tmp_path.glob("dsv4serve-route-metrics-*")
        served_by = {p.stem.split("_")[1] for p in metrics_dir.glob("counter_*.db")}
        assert len(served_by) == 2, served_by  # both workers answered turns of it
        assert list(tmp_path.glob("dsv4serve-route-sessions-*/sessions.db"))
    finally:
        proc.send_signal(2)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not list(tmp_path.glob("dsv4serve-route-sessions-*"))  # removed at the end


# -- parallel mode --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "level"), [("parallel", "simple"), ("parallel", "complex"), ("classify-first", "simple")]
)
def test_parallel_mode_starts_flash_with_the_classifier_and_cancels_it_for_pro(
    pair, start_router, mode, level
):
    flash, pro = pair
    flash.level, flash.classify_delay = level, 0.5
    flash.chunks, flash.chunk_gap = 30, 0.1  # a 3 s answer, still running when the classifier answers
    router = start_router(flash, pro, profile(mode))
    events = []
    with CLIENT.stream(
        "POST",
        router.url + "/v1/chat/completions",
        json={"model": "auto", "messages": turns("hi"), "stream": True},
    ) as resp:
        assert resp.headers["x-dsv4serve-route-reason"] == f"classified-{level}"
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    (asked,) = flash.classifier_calls()
    (started,) = flash.served_calls()
    if mode == "classify-first":  # Flash starts once the classifier has answered
        assert started["t_in"] >= asked["t_out"]
        return
    assert started["t_in"] < asked["t_out"]  # Flash's answer started while the classifier ran
    want = "pro-model" if level == "complex" else "flash-model"
    assert len(events) == (3 if level == "complex" else 30)
    assert {e["model"] for e in events} == {want}  # not one byte of Flash's answer for a complex one
    outcome = "cancelled" if level == "complex" else "kept"
    assert router.metric("dsv4serve_route_parallel_total", outcome=outcome) == 1
    if level == "complex":
        deadline = time.monotonic() + 5
        while not flash.cut and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flash.cut == 1  # its stream was closed: vLLM aborts the request


# -- knobs: a threshold on the classifier's confidence, the context window --------------------------------


def test_a_threshold_on_the_confidence_and_the_context_window(pair, start_router):
    flash, pro = pair
    flash.level, flash.p_complex = "simple", 0.4  # the label says simple, with P(complex) = 0.4
    router = start_router(flash, pro, profile(classifier={"threshold": 0.3}))
    with httpx.Client(trust_env=False) as client:
        resp = client.post(
            router.url + "/v1/chat/completions", json={"model": "auto", "messages": turns("a")}
        )
    assert resp.headers["x-dsv4serve-route"] == "pro" and resp.headers["x-dsv4serve-p-complex"] == "0.4000"
    assert resp.headers["x-dsv4serve-route-reason"] == "classified-complex"
    # Flash holds 1000 tokens, Pro 4000: a short request is never counted; a long one goes where it fits,
    # conversation or not; one too long for both is refused.
    flash.max_model_len, pro.max_model_len = 1000, 4000
    flash.p_complex, flash.level = None, "simple"
    router = start_router(flash, pro)
    assert ask(router.url, turns("short")) == ("flash", "classified-simple")
    assert not flash.tokenize_calls()
    assert ask(router.url, turns("short", "x " * 3000)) == ("pro", "context-window")
    assert ask(router.url, turns("short", "brief")) == ("pro", "session")  # it escalated the conversation
    assert len(flash.tokenize_calls()) == 1
    fits = turns("short", "x" * 3000)
    count = len(json.dumps(fits)) // 4  # as the test server's /tokenize counts
    assert count < 1000
    assert ask(router.url, fits, {"x-session-id": "new"}) == ("flash", "classified-simple")
    assert ask(router.url, fits, {"x-session-id": "new"}, max_tokens=1001 - count) == (
        "pro",
        "context-window",
    )
    huge = CLIENT.post(
        router.url + "/v1/chat/completions", json={"model": "auto", "messages": turns("y " * 9000)}
    )
    assert (
        huge.status_code == 400 and "max_model_len: flash 1000, pro 4000" in huge.json()["error"]["message"]
    )
    assert not [c for c in pro.served_calls() if "y y" in json.dumps(c["body"])]


# -- the clients' key ---------------------------------------------------------------------------------------


def test_clients_need_the_routers_key_except_for_health(pair, start_router, run_cli, monkeypatch):
    flash, pro = pair
    router = start_router(flash, pro, api_key="sk-router-1")
    body = {"model": "auto", "messages": turns("hi")}
    for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/metrics", "GET")):
        for auth in (None, "Bearer sk-router-2", "Bearer sk-router-1x", "sk-router-1"):
            resp = CLIENT.request(
                method, router.url + path, json=body, headers={"authorization": auth} if auth else {}
            )
            assert resp.status_code == 401, (path, auth)
            assert "sk-router" not in resp.text
    assert CLIENT.get(router.url + "/health").status_code == 200
    ok = CLIENT.post(
        router.url + "/v1/chat/completions", json=body, headers={"authorization": "bearer sk-router-1"}
    )
    assert ok.status_code == 200
    assert not flash.served_calls()[0]["headers"].get("authorization")  # the client's key stays here
    monkeypatch.delenv("DSV4SERVE_API_KEY", raising=False)
    refused = run_cli("route", "--flash", flash.url, "--pro", pro.url, "--host", "0.0.0.0", "--port", "1")
    assert refused.exit_code == 2 and "--host 0.0.0.0 without a client key" in refused.stderr
    assert "--insecure-no-key" in refused.stderr


# -- route eval ------------------------------------------------------------------------------------------


def test_the_shipped_dataset_covers_code_maths_and_chat_at_both_levels():
    name, examples = eval_dataset.load_dataset("builtin")
    assert len(examples) >= 100
    kinds = {(e.kind, e.level) for e in examples}
    assert kinds == {(k, lv) for k in ("code", "math", "chat") for lv in ("simple", "complex")}
    texts = [json.dumps(e.messages) for e in examples]
    assert len(set(texts)) == len(texts)


def test_route_eval_reports_the_routing_against_baselines(pair, run_cli, tmp_path):
    flash, _ = pair

    def judged(text: str) -> str:  # a classifier that is right about code only
        return "complex" if "code" in text or "def " in text else "simple"

    flash.level = judged
    flash.p_complex = lambda text: (len(text) % 97) / 97  # some confidence, different per prompt
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "write code " + "c" * i, "level": "complex", "kind": "code"} for i in range(6)]
    rows += [
        {"prompt": f"prove lemma {i} " + "x" * 40 * i, "level": "complex", "kind": "math"} for i in range(4)
    ]
    rows += [
        {"prompt": f"hello {i}", "level": "simple", "kind": "chat", "completion_tokens": 50}
        for i in range(10)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    args = ["route", "eval", str(data), "--flash", flash.url, "--price", "flash=1/2", "--price", "pro=4/8"]
    result = run_cli(*args, "--target-pro-share", "0.25", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["examples"] == 20 and out["tokens"]["prompt_counted"] == 20
    assert out["confusion"] == {"simple": {"flash": 10, "pro": 0}, "complex": {"flash": 4, "pro": 6}}
    router, always_flash, always_pro, length, random = out["strategies"]
    assert (router["pro_share"], router["accuracy"], router["complex_to_pro"]) == (0.3, 0.8, 0.6)
    assert always_pro["cost_vs_pro"] == 1.0 and always_flash["pro_share"] == 0.0
    # The 6 longest: 3 proofs, then the longest code requests.
    assert (length["pro_share"], length["complex_to_pro"], length["min_chars"]) == (0.3, 0.6, 14)
    assert random["accuracy"] == pytest.approx(0.3 * 0.5 + 0.7 * 0.5)
    # Cost: each prompt's tokens (as /tokenize counted them) and output tokens at each model's prices;
    # the classifier's 100 + 7 tokens a request are charged to the router at Flash's.
    tokens = [len(json.dumps([{"role": "user", "content": r["prompt"]}])) // 4 for r in rows]
    completion = [300] * 10 + [50] * 10

    def cost(tier: str, i: int) -> float:
        price_in, price_out = {"flash": (1, 2), "pro": (4, 8)}[tier]
        return tokens[i] * price_in + completion[i] * price_out

    routed = sum(cost("pro" if i < 6 else "flash", i) for i in range(20)) + 20 * (100 * 1 + 7 * 2)
    assert router["cost_vs_pro"] == pytest.approx(routed / sum(cost("pro", i) for i in range(20)))
    conf = out["confidence"]
    assert conf["answers"] == 20 and conf["target"]["pro_share"] == 0.25
    ps = sorted(((len(r["prompt"]) % 97) / 97 for r in rows), reverse=True)
    assert conf["target"]["threshold"] == pytest.approx(ps[4], abs=1e-6)
    text = run_cli(*args)
    assert text.exit_code == 0 and "always-Pro" in text.stdout and "length rule (>= " in text.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "level": "simple"}\n{"prompt": "b", "level": "hard"}\n')
    failed = run_cli("route", "eval", str(bad), "--flash", flash.url)
    assert failed.exit_code == 2 and f"{bad}:2: level 'hard' is not simple or complex" in failed.stderr
    assert run_cli("route", "eval", str(data), "--flash", flash.url, "--price", "flash=1").exit_code == 2
    down = run_cli("route", "eval", str(data), "--flash", "http://127.0.0.1:9")
    assert down.exit_code == 5 and "does not answer /v1/models" in down.stderr
