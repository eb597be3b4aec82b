"""`dsv4serve route` between two real vLLM servers (CPU build, tiny profile), all as separate processes.

One module-scoped pair, started one after the other (each takes ~30 s and ~2.8 GiB): Flash as `up tiny`,
Pro as the planner's vLLM command for tiny, serving the name tiny-pro and requiring an API key (vLLM's
VLLM_API_KEY); `up` cannot start that one, as its readiness completion sends no key.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.router_servers import closed_port_url, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PRO_KEY = "sk-live-pro-key"
CLIENT = httpx.Client(trust_env=False, timeout=120)
PROFILE = """\
name: live
classifier:
  prompt: |
    Classify the request. complex = it needs code generation or logical calculation; otherwise simple.
  method: {method}
  max_tokens: 32
  timeout_s: 60  # two vLLM servers share two cores here
rules:
  - {{name: tools, route: pro, when: {{tools: true}}}}
  - {{name: pro-tag, route: pro, when: {{contains: ["#pro"]}}}}
"""


class Process:
    """A process (by default a dsv4serve command) in its own session, its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], argv: list[str] | None = None):
        self.log = log
        self.out = log.open("w")
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "dsv4serve", *args],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def wait_for(self, url: str, timeout: float, headers: dict | None = None) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.tail()}"
            try:
                if CLIENT.get(url, headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{url} not ready in {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        return "".join(self.log.read_text(errors="replace").splitlines(True)[-30:])

    def stop(self) -> int:
        """SIGINT to the whole group (a bare vLLM has EngineCore and a worker in it), SIGKILL if stuck."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the main process
        self.out.close()
        return self.proc.returncode


def bare_vllm_argv(home: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The planner's vLLM command for tiny, to run without `up`: `up`'s readiness completion sends no
    API key, so it cannot start a vLLM that requires one (VLLM_API_KEY)."""
    from dsv4serve.serving.prepare import prepare_launch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        mp.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
        _, spec = prepare_launch("tiny", port=port, progress=False)
    tmp = home / f"vllm-tmp-{port}"
    tmp.mkdir()
    return [*spec.argv, "--served-model-name", "tiny-pro"], {**spec.env, "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Flash and Pro (real vLLM), a key file for Pro, and a way to start routers over them."""
    home = tmp_path_factory.mktemp("live-home")
    env = {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }
    env["HF_HOME"] = str(home / ".cache" / "huggingface")
    ports = {"flash": free_port(), "pro": free_port()}
    started: list[Process] = []
    try:
        flash = Process(["up", "tiny", "--port", str(ports["flash"])], home / "flash.log", env)
        started.append(flash)
        flash.wait_for(f"http://127.0.0.1:{ports['flash']}/v1/models", 280)
        argv, pro_env = bare_vllm_argv(home, ports["pro"])
        pro = Process([], home / "pro.log", {**env, **pro_env, "VLLM_API_KEY": PRO_KEY}, argv)
        started.append(pro)
        auth = {"authorization": f"Bearer {PRO_KEY}"}
        pro.wait_for(f"http://127.0.0.1:{ports['pro']}/v1/models", 280, auth)
        key_file = home / "pro.key"
        key_file.write_text(PRO_KEY + "\n")

        def router(method: str = "compact_json", *extra: str) -> str:
            profile = home / f"live-{method}.yaml"
            profile.write_text(PROFILE.format(method=method))
            port = free_port()
            args = ["route", str(profile), "--flash", f"http://127.0.0.1:{ports['flash']}", *extra]
            args += ["--port", str(port)]
            if "--pro" not in extra:
                args += ["--pro", f"http://127.0.0.1:{ports['pro']}"]
            proc = Process(args, home / f"route-{port}.log", env)
            started.append(proc)
            proc.wait_for(f"http://127.0.0.1:{port}/v1/models", 30)
            return f"http://127.0.0.1:{port}"

        yield {"ports": ports, "key_file": str(key_file), "router": router, "logs": home, "env": env}
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="module")
def main_router(live):
    """The router as a user runs it: the key for Pro from a file."""
    return live["router"]("compact_json", "--pro-key-file", live["key_file"])


def chat(router: str, text: str, session: str | None = None, **extra) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}
    headers = {"x-session-id": session} if session else None  # else: the conversation of its text
    return CLIENT.post(router + "/v1/chat/completions", json=body, headers=headers)


def route_of(resp: httpx.Response) -> tuple[str, str, str]:
    assert resp.status_code == 200, resp.text
    return resp.headers["x-dsv4serve-route"], resp.headers["x-dsv4serve-route-reason"], resp.json()["model"]


def metric(router: str, line_start: str) -> float:
    for line in CLIENT.get(router + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_rule_forces_pro_which_needs_its_key(live, main_router):
    assert route_of(chat(main_router, "#pro say hi")) == ("pro", "rule:pro-tag", "tiny-pro")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    resp = chat(main_router, "hi", tools=tools, tool_choice="none")
    assert resp.headers["x-dsv4serve-route-reason"] == "rule:tools" and resp.json()["model"] == "tiny-pro"
    direct = chat(f"http://127.0.0.1:{live['ports']['pro']}", "hi")
    assert direct.status_code == 401  # Pro really requires the key the router sends
    completion = CLIENT.post(
        main_router + "/v1/completions", json={"model": "auto", "prompt": "#pro once", "max_tokens": 4}
    )
    assert completion.status_code == 200 and completion.json()["model"] == "tiny-pro"
    logs = "".join(p.read_text(errors="replace") for p in live["logs"].glob("route-*.log"))
    assert "key from" in logs and PRO_KEY not in logs


def test_structured_output_at_temperature_0_classifies_the_same_way_twice(live, main_router):
    prompt = "Write a Python function that returns the n-th prime number."
    # Two conversations: within one, the second turn would answer as `session` without asking.
    first, second = route_of(chat(main_router, prompt, "a")), route_of(chat(main_router, prompt, "b"))
    assert first == second
    assert first[1] in ("classified-simple", "classified-complex")
    assert first[2] == ("tiny-pro" if first[0] == "pro" else "tiny")
    assert metric(main_router, 'dsv4serve_route_classifier_tokens_total{kind="completion"}') >= 2 * 18
    assert metric(main_router, "dsv4serve_route_classifier_seconds_count") >= 2
    explain = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsv4serve",
            "route",
            "--flash",
            f"http://127.0.0.1:{live['ports']['flash']}",
            "--explain",
            prompt,
            "--json",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **live["env"]},
    )
    assert explain.returncode == 0, explain.stderr
    assert json.loads(explain.stdout)["reason"] == first[1]


def test_parse_error_and_a_refused_key_fall_back_to_flash(live):
    # OpenAI's json_schema form lets vLLM emit free whitespace; the random-weight model fills its 32
    # tokens with it, so the answer is cut short: a real parse error from a real vLLM.
    router = live["router"]("json_schema")  # and no key for Pro
    assert route_of(chat(router, "What is 12 * 7?")) == ("flash", "parse-error", "tiny")
    assert route_of(chat(router, "#pro hi")) == ("flash", "pro-unavailable", "tiny")
    assert metric(router, 'dsv4serve_route_upstream_errors_total{kind="models_http_401",upstream="pro"}') >= 1


def test_pro_down_goes_to_flash(live):
    router = live["router"]("compact_json", "--pro", closed_port_url())
    assert route_of(chat(router, "#pro hi")) == ("flash", "pro-unavailable", "tiny")
    health = CLIENT.get(router + "/health").json()
    assert health == {"status": "ok", "flash": True, "pro": False}


def test_streams_arrive_token_by_token(main_router):
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "#pro tell a story"}],
        "max_tokens": 48,
        "min_tokens": 48,  # a random-weight model may stop at once otherwise
        "stream": True,
    }
    arrivals = []
    with CLIENT.stream("POST", main_router + "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200 and resp.headers["x-dsv4serve-route"] == "pro"
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 48  # one event per token, and [DONE]
    # Buffered whole, every event would arrive at once; passed through, they arrive as vLLM decodes.
    distinct = len({round(t, 3) for t in arrivals})
    assert arrivals[-1] - arrivals[0] > 0.05 and distinct >= 10, (arrivals[-1] - arrivals[0], distinct)


def generated(port: int) -> float:
    """The tokens a vLLM has generated so far."""
    text = CLIENT.get(f"http://127.0.0.1:{port}/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_eval_calibrates_and_a_parallel_router_follows_its_threshold(live):
    """`route eval` on the shipped dataset against the real pair (the machinery: tiny models classify at
    random), with a calibrated threshold; a threshold routes a parallel-mode router, whose cancelled
    Flash answer vLLM stops generating."""
    pair = [f"--flash=http://127.0.0.1:{live['ports']['flash']}"]
    pair += [f"--pro=http://127.0.0.1:{live['ports']['pro']}", f"--pro-key-file={live['key_file']}"]
    result = subprocess.run(
        # One call at a time, as the router below makes them: a CPU batch of 8 moves P(complex) by ~0.01.
        [sys.executable, "-m", "dsv4serve", "route", "eval", "builtin", *pair, "--concurrency=1"]
        + ["--target-pro-share=0.5", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, **live["env"]},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["examples"] >= 100 and out["tokens"]["prompt_counted"] == out["examples"]  # vLLM's /tokenize
    assert sum(sum(row.values()) for row in out["confusion"].values()) == out["examples"]
    assert [s["name"] for s in out["strategies"]][:3] == ["router", "always-Flash", "always-Pro"]
    decided = [d for d in out["decisions"] if d["p_complex"] is not None]
    classified = sum(n for reason, n in out["reasons"].items() if reason.startswith("classified-"))
    assert len(decided) == out["confidence"]["answers"] == classified > 0  # every answer has logprobs
    assert abs(out["confidence"]["target"]["pro_share"] - 0.5) <= 0.1
    ps = [d["p_complex"] for d in decided]
    assert min(ps) <= out["confidence"]["target"]["threshold"] <= max(ps)
    # A random-weight model's P(complex) sits near 0.5 and moves by a few hundredths when the call shares
    # a CPU batch (in parallel mode, with Flash's answer): thresholds 1 and 0 make the routes certain.
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Write a Python function that reverses a list."}],
        "max_tokens": 256,
        "min_tokens": 256,  # Flash's answer runs far longer than the classifier's
        "stream": True,
    }
    for threshold, route, model in ((1.0, "flash", "tiny"), (0.0, "pro", "tiny-pro")):
        profile = live["logs"] / f"parallel-{threshold}.yaml"
        yaml = PROFILE.format(method="compact_json")
        yaml = yaml.replace("  timeout_s: 60", f"  timeout_s: 60\n  threshold: {threshold}")
        profile.write_text(yaml + "mode: parallel\n")
        port = free_port()
        log = live["logs"] / f"route-parallel-{threshold}.log"
        router = Process(["route", str(profile), *pair, "--port", str(port)], log, live["env"])
        try:
            url = f"http://127.0.0.1:{port}"
            router.wait_for(url + "/v1/models", 30)
            before = generated(live["ports"]["flash"])
            with CLIENT.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                assert resp.headers["x-dsv4serve-route"] == route, resp.headers
                events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
            assert {e["model"] for e in events} == {model}
            time.sleep(1.0)
            # Flash generated its whole answer (and the classifier's) when it was the answer; cancelled,
            # it stopped well before its 256 tokens.
            spent = generated(live["ports"]["flash"]) - before
            assert spent >= 256 if route == "flash" else spent < 256, spent
            outcome = "kept" if route == "flash" else "cancelled"
            assert (
                f'dsv4serve_route_parallel_total{{outcome="{outcome}"}} 1.0'
                in CLIENT.get(url + "/metrics").text
            )
        finally:
            router.stop()
