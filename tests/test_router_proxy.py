"""The router's proxy (dsv4serve.router.app) and `dsv4serve route`, against real local HTTP servers.

The upstreams are small stdlib servers (tests/router_servers.py) that answer what a test needs (junk, a
slow classifier, 503, a dropped connection, timed chunks); the router is its real Starlette app under
uvicorn, or the command as a process. tests/test_router_live.py runs it between two real vLLM servers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from dsv4serve.router.profile import load_router_profile
from dsv4serve.router.upstreams import Upstream
from tests.router_servers import RouterThread, closed_port_url, fake_pair, free_port, read_ready

CLIENT = httpx.Client(trust_env=False, timeout=30)


def chat(text: str, **extra) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


def profile(**classifier):
    base = load_router_profile()
    return dataclasses.replace(base, classifier=dataclasses.replace(base.classifier, **classifier))


# -- the proxy, against real local HTTP servers --------------------------------------------------------


@pytest.fixture
def pair():
    """A fake Flash and a fake Pro (real HTTP servers); each test sets their behaviour."""
    yield from fake_pair()


@pytest.fixture
def start_router():
    started = []

    def start(flash_url, pro_url, prof=None, **upstream):
        flash = Upstream("flash", flash_url, upstream.get("flash_model"), upstream.get("flash_key"))
        pro = Upstream("pro", pro_url, upstream.get("pro_model"), upstream.get("pro_key"))
        started.append(RouterThread(prof or load_router_profile(), flash, pro))
        return started[-1]

    yield start
    for router in started:
        router.stop()


def post(router, body, path="/v1/chat/completions"):
    return CLIENT.post(router.url + path, json=body)


@pytest.mark.parametrize(("level", "route"), [("simple", "flash"), ("complex", "pro")])
def test_the_classifier_decides(pair, start_router, level, route):
    flash, pro = pair
    flash.level = level
    router = start_router(flash.url, pro.url)
    resp = post(router, chat("Prove that sqrt(2) is irrational"))
    assert resp.status_code == 200
    assert resp.headers["x-dsv4serve-route"] == route
    assert resp.headers["x-dsv4serve-route-reason"] == f"classified-{level}"
    assert resp.json()["model"] == f"{route}-model"
    (call,) = flash.classifier_calls()
    assert call["body"]["model"] == "flash-model" and call["body"]["temperature"] == 0
    assert "sqrt(2)" in call["body"]["messages"][1]["content"]
    served = (pro if route == "pro" else flash).served_calls()
    assert [c["body"]["model"] for c in served] == [f"{route}-model"]  # "auto" rewritten
    assert router.metric("dsv4serve_route_requests_total", route=route, reason=f"classified-{level}") == 1
    assert router.metric("dsv4serve_route_classifier_seconds_count") == 1
    assert router.metric("dsv4serve_route_classifier_tokens_total", kind="prompt") == 100


@pytest.mark.parametrize("junk", ["not json at all", '{"level": "medium"}', '{"lev'])
def test_a_junk_classification_falls_back_to_flash(pair, start_router, junk):
    flash, pro = pair
    flash.level = junk
    router = start_router(flash.url, pro.url)
    resp = post(router, chat("hi"))
    assert resp.status_code == 200 and resp.json()["model"] == "flash-model"
    assert resp.headers["x-dsv4serve-route-reason"] == "parse-error"
    assert not pro.served_calls()
    assert router.metric("dsv4serve_route_requests_total", route="flash", reason="parse-error") == 1
    assert router.metric("dsv4serve_route_classifier_tokens_total", kind="completion") == 7  # spent anyway
    assert router.metric(
        "dsv4serve_route_upstream_errors_total", upstream="flash", kind="classifier_parse-error"
    )


def test_a_slow_classifier_times_out_to_flash(pair, start_router):
    flash, pro = pair
    flash.level, flash.classify_delay = "complex", 3.0
    router = start_router(flash.url, pro.url, profile(timeout_s=0.5))
    t0 = time.monotonic()
    resp = post(router, chat("hi"))
    assert time.monotonic() - t0 < 2.5
    assert resp.headers["x-dsv4serve-route"] == "flash"
    assert resp.headers["x-dsv4serve-route-reason"] == "timeout"


def test_pro_down_goes_to_flash_and_skips_the_classifier_for_a_while(pair, start_router):
    flash, _ = pair
    flash.level = "complex"
    router = start_router(flash.url, closed_port_url(), pro_model="pro-model")
    first = post(router, chat("hi"))
    assert first.status_code == 200 and first.json()["model"] == "flash-model"
    assert first.headers["x-dsv4serve-route-reason"] == "pro-unavailable"
    assert router.metric("dsv4serve_route_upstream_errors_total", upstream="pro", kind="connect") == 1
    second = post(router, chat("hi"))
    assert second.headers["x-dsv4serve-route-reason"] == "pro-unavailable"
    assert len(flash.classifier_calls()) == 1  # Pro known down: no second classifier call
    assert router.metric("dsv4serve_route_requests_total", route="flash", reason="pro-unavailable") == 2


@pytest.mark.parametrize("status", [503, 401])
def test_pro_failing_or_refusing_the_key_goes_to_flash(pair, start_router, status):
    flash, pro = pair
    flash.level, pro.status = "complex", status
    router = start_router(flash.url, pro.url)
    resp = post(router, chat("hi"))
    assert resp.status_code == 200 and resp.json()["model"] == "flash-model"
    assert resp.headers["x-dsv4serve-route-reason"] == "pro-unavailable"
    kind = f"http_{status}"
    assert router.metric("dsv4serve_route_upstream_errors_total", upstream="pro", kind=kind) == 1


@pytest.mark.parametrize(("drops", "status"), [(1, 200), (2, 502)])
def test_a_connection_closed_before_any_answer_is_tried_once_more(pair, start_router, drops, status):
    flash, pro = pair
    flash.drop = drops
    router = start_router(flash.url, pro.url, flash_model="flash-model", pro_model="pro-model")
    resp = post(router, {"model": "flash-model", "prompt": "hi"}, "/v1/completions")
    assert resp.status_code == status
    assert len(flash.served_calls()) == 2
    kind = {"upstream": "flash", "kind": "protocol"}
    assert router.metric("dsv4serve_route_upstream_errors_total", **kind) == drops


def test_a_rule_skips_the_classifier(pair, start_router):
    flash, pro = pair
    router = start_router(flash.url, pro.url)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    resp = post(router, chat("hi", tools=tools))
    assert resp.headers["x-dsv4serve-route"] == "pro"
    assert resp.headers["x-dsv4serve-route-reason"] == "rule:tools"
    assert not flash.calls[1:] and not flash.classifier_calls()
    assert pro.served_calls()[0]["body"]["tools"] == tools  # the body passes through


def test_the_routers_own_time_is_in_each_answer_and_in_fine_buckets(pair, start_router):
    flash, pro = pair
    router = start_router(flash.url, pro.url)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    owns = [float(post(router, chat("hi", tools=tools)).headers["x-dsv4serve-proxy-ms"]) for _ in range(3)]
    name = "dsv4serve_route_proxy_overhead_seconds"
    assert router.metric(name + "_count") == 3
    # The histogram holds the same observations the headers report (the header rounds to 1 us).
    assert abs(router.metric(name + "_sum") * 1000 - sum(owns)) < 0.01
    assert all(0 < own < 1000 for own in owns)
    # Enough bounds below 10 ms to place a p50 near 2 ms and a p99 near 10 ms.
    metrics = CLIENT.get(router.url + "/metrics").text
    bounds = [
        float(line.split('le="')[1].split('"')[0])
        for line in metrics.splitlines()
        if name + "_bucket" in line
    ]
    assert sum(b <= 0.01 for b in bounds) >= 10


def test_asking_for_an_upstreams_model_pins_it(pair, start_router):
    flash, pro = pair
    router = start_router(flash.url, pro.url, flash_model="flash-model", pro_model="pro-model")
    resp = post(router, {"model": "pro-model", "prompt": "hi"}, "/v1/completions")
    assert (
        resp.headers["x-dsv4serve-route"] == "pro"
        and resp.headers["x-dsv4serve-route-reason"] == "rule:model"
    )
    assert pro.served_calls()[0]["path"] == "/v1/completions" and not flash.served_calls()


def test_streams_pass_through_chunk_by_chunk(pair, start_router):
    flash, pro = pair
    flash.chunks, flash.chunk_gap = 4, 0.4
    router = start_router(flash.url, pro.url, flash_model="flash-model")
    arrivals = []
    t0 = time.monotonic()
    body = chat("hi", stream=True)
    with CLIENT.stream("POST", router.url + "/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - t0, line))
    assert [line for _, line in arrivals][-1] == "data: [DONE]"
    assert [json.loads(line[6:])["choices"][0]["delta"]["content"] for _, line in arrivals[:-1]] == [
        f"part{i} " for i in range(4)
    ]
    times = [t for t, _ in arrivals]
    # The upstream spends 1.6 s on the stream: each event must reach the client when it was sent.
    assert times[-1] - times[0] > 1.2
    assert all(b - a > 0.25 for a, b in zip(times, times[1:], strict=False))


def test_upstream_keys_replace_the_clients(pair, start_router):
    flash, pro = pair
    flash.key, pro.key, flash.level = "sk-flash", "sk-pro", "complex"
    router = start_router(flash.url, pro.url, flash_key="sk-flash", pro_key="sk-pro")
    resp = CLIENT.post(
        router.url + "/v1/chat/completions", json=chat("hi"), headers={"authorization": "Bearer client"}
    )
    assert resp.status_code == 200 and resp.headers["x-dsv4serve-route"] == "pro"
    assert {c["headers"].get("authorization") for c in flash.calls} == {"Bearer sk-flash"}
    assert {c["headers"].get("authorization") for c in pro.calls} == {"Bearer sk-pro"}


def test_models_health_and_errors(pair, start_router):
    flash, pro = pair
    router = start_router(flash.url, pro.url)
    models = CLIENT.get(router.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["auto", "flash-model", "pro-model"]
    assert CLIENT.get(router.url + "/health").json() == {"status": "ok", "flash": True, "pro": True}
    bad = CLIENT.post(router.url + "/v1/chat/completions", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    flash.close()
    health = CLIENT.get(router.url + "/health")
    assert health.status_code == 503 and health.json()["flash"] is False
    down = post(router, chat("hi"))
    assert down.status_code == 502 and down.headers["x-dsv4serve-route"] == "flash"
    metrics = CLIENT.get(router.url + "/metrics").text
    assert 'dsv4serve_route_upstream_errors_total{kind="connect",upstream="flash"} 1.0' in metrics
    assert "dsv4serve_route_classifier_seconds_bucket" in metrics


# -- the command, as a process --------------------------------------------------------------------------


def run_route(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsv4serve", "route", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_explain_prints_the_decision_without_serving(pair):
    flash, pro = pair
    flash.level = "complex"
    result = run_route("--flash", flash.url, "--pro", pro.url, "--explain", "Write a parser", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["route"], out["reason"], out["prompt_tokens"]) == ("pro", "classified-complex", 100)
    assert not pro.served_calls() and not flash.served_calls()
    text = run_route("--flash", flash.url, "--explain", "hi", "--tools")
    assert text.returncode == 0 and "route: pro  reason: rule:tools" in text.stdout


def test_explain_needs_flash_and_serving_needs_both():
    result = run_route("--explain", "hi")
    assert result.returncode == 2 and "--flash is required" in result.stderr
    result = run_route("--flash", "http://127.0.0.1:1")
    assert result.returncode == 2 and "--pro is required" in result.stderr
    down = run_route("--flash", closed_port_url(), "--explain", "hi")
    assert down.returncode == 5 and "does not answer /v1/models" in down.stderr


def test_route_serves_until_sigint_and_never_prints_keys(pair, tmp_path):
    flash, pro = pair
    flash.key = pro.key = "sk-secret-123"
    key = tmp_path / "key"
    key.write_text("sk-secret-123\n")
    port = str(free_port())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dsv4serve",
            "route",
            "--flash",
            flash.url,
            "--pro",
            pro.url,
            "--port",
            port,
            "--flash-key-file",
            str(key),
            "--json",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DSV4SERVE_PRO_API_KEY": "sk-secret-123"},
    )
    try:
        ready = read_ready(proc)
        assert ready["upstreams"]["pro"]["model"] == "pro-model" and ready["upstreams"]["flash"]["up"]
        resp = CLIENT.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("hi"))
        assert resp.status_code == 200
        busy = run_route("--flash", flash.url, "--pro", pro.url, "--port", port)
        assert busy.returncode == 5 and f"port {port} on 127.0.0.1 is already in use" in busy.stderr
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "sk-secret" not in out + err


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone or a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]))


def _children(pid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and (_stat(e) or ("", 0))[1] == pid]


def _start_workers(pair, tmp_path, workers: int):
    flash, pro = pair
    port = str(free_port())
    argv = [sys.executable, "-m", "dsv4serve", "route", "--flash", flash.url, "--pro", pro.url]
    proc = subprocess.Popen(
        [*argv, "--port", port, "--workers", str(workers), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where the workers' metric files go
    )
    ready = read_ready(proc)
    assert ready["workers"] == workers
    return proc, f"http://127.0.0.1:{port}"


def test_workers_share_the_port_and_one_metrics_sums_them(pair, tmp_path):
    import concurrent.futures

    proc, url = _start_workers(pair, tmp_path, 3)
    try:
        assert len(_children(proc.pid)) == 2  # the first worker is the command's own process

        def one(i: int) -> int:  # a connection each: the kernel spreads connections, not requests
            with httpx.Client(trust_env=False, timeout=30) as client:
                return client.post(url + "/v1/chat/completions", json=chat(f"hi {i}")).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(60)))
        assert statuses == [200] * 60
        (metrics_dir,) = tmp_path.glob("dsv4serve-route-metrics-*")
        served_by = {p.stem.split("_")[1] for p in metrics_dir.glob("counter_*.db")}
        assert len(served_by) >= 2, served_by  # more than one process answered
        text = CLIENT.get(url + "/metrics").text  # whichever worker answers, the sum of all
        line = 'dsv4serve_route_requests_total{reason="classified-simple",route="flash"} 60.0'
        assert line in text.splitlines()
    finally:
        proc.send_signal(2)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not list(tmp_path.glob("dsv4serve-route-metrics-*"))  # removed at the end


def test_a_killed_router_leaves_no_worker(pair, tmp_path):
    proc, url = _start_workers(pair, tmp_path, 2)
    (worker,) = _children(proc.pid)
    proc.kill()
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while _stat(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stat(worker) is None, f"worker {worker} outlived its router"
    with pytest.raises(httpx.ConnectError):
        CLIENT.get(url + "/health")
