"""DeepSeek-V4 (tiny-v4) served for real on this CPU: through `transformers serve` and through llama.cpp's
llama-server on a GGUF its own converter made from the generated checkpoint. Each server is started once
by `dsv4serve up` and stopped with Ctrl-C at the end: a plain chat, thinking on (the text in
`reasoning_content`), a tools request, streaming, and nothing left behind. Both give the same greedy
first tokens; llama.cpp's KV buffers are the planner's figure. The llama.cpp half needs llama-server
(`make llama-server`; CI builds it in `make install`) and is skipped without it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from dsv4serve.engines.llamacpp.binary import find_server
from tests.test_launch import Cli, assert_all_gone, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
LLAMA_SERVER = find_server()  # read before the tests' isolated HOME hides dsv4serve's real cache
needs_llama = pytest.mark.skipif(LLAMA_SERVER is None, reason="llama-server not built (make llama-server)")
PROMPT = "The capital of France is"


class Running:
    """One `dsv4serve up tiny-v4 --engine E` in the foreground, in a HOME of its own."""

    def __init__(self, engine: str, home: Path):
        self.port = free_port()
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "PYTHONPATH": str(REPO),
        }
        env.pop("HF_HUB_OFFLINE", None)
        if LLAMA_SERVER:
            env["DSV4SERVE_LLAMA_SERVER"] = LLAMA_SERVER
        argv = [sys.executable, "-m", "dsv4serve", "up", "tiny-v4", "--engine", engine, "--json"]
        self.cli = Cli([*argv, "--port", str(self.port)], env=env)
        m = self.cli.wait_for(r"(?:llama-server|transformers serve) started: pid (\d+) .*TMPDIR (\S+)", 600)
        self.pgid, self.tmpdir = int(m.group(1)), m.group(2)
        self.cli.wait_for(r'"event": "ready"', 600, stream="out")
        self.ready = json.loads("".join(self.cli.out))

    def post(self, path: str, body: dict) -> dict:
        body = {"model": self.ready["model"], **body}
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=120) as resp:
            if body.get("stream"):
                return {"chunks": [line.decode() for line in resp if line.startswith(b"data: ")]}
            return json.loads(resp.read())

    def stop(self) -> int:
        self.cli.proc.send_signal(signal.SIGINT)
        return self.cli.finish(60)


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    server = Running("transformers", tmp_path_factory.mktemp("tf-home"))
    yield server
    if server.cli.proc.poll() is None:
        server.stop()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if LLAMA_SERVER is None:
        pytest.skip("llama-server not built (make llama-server)")
    server = Running("llama.cpp", tmp_path_factory.mktemp("llama-home"))
    yield server
    if server.cli.proc.poll() is None:
        server.stop()


def chat(server: Running, **extra) -> dict:
    messages = [{"role": "user", "content": "Hello!"}]
    return server.post(
        "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0, **extra}
    )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def check_engine(server: Running) -> None:
    plain = chat(server, chat_template_kwargs={"thinking": False})["choices"][0]["message"]
    assert plain["content"] and not plain.get("reasoning_content")
    thought = chat(server, chat_template_kwargs={"thinking": True})["choices"][0]["message"]
    assert thought.get("reasoning_content")  # random weights never close </think> in 8 tokens
    tools = chat(server, tools=TOOLS, chat_template_kwargs={"thinking": False})["choices"][0]
    assert tools["message"]["content"] or tools["message"].get("tool_calls")
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
    }
    stream = server.post("/v1/chat/completions", {**body, "chat_template_kwargs": {"thinking": False}})[
        "chunks"
    ]
    deltas = [json.loads(c[6:]) for c in stream if c.strip() != "data: [DONE]"]
    text = "".join((d["choices"][0]["delta"].get("content") or "") for d in deltas if d.get("choices"))
    assert len(deltas) >= 3 and text


def test_transformers_serves_tiny_v4(transformers_server):
    check_engine(transformers_server)
    assert "/checkpoints/tiny-v4-" in transformers_server.ready["model"]  # it answers to the path it pinned


@needs_llama
def test_llama_cpp_serves_tiny_v4_as_gguf(llama_server):
    check_engine(llama_server)
    assert llama_server.ready["model"] == "tiny-v4"


@needs_llama
def test_llama_cpp_kv_buffers_are_the_planned_ones(llama_server):
    """The planner's KV figure (planning/llamacpp_kv.kv_bytes) against llama-server's own log lines."""
    from dsv4serve.planning.llamacpp_kv import compute_bytes, kv_bytes
    from dsv4serve.profiles.load import load_profile

    log = Path(llama_server.ready["log"]).read_text(errors="replace")
    mib = [float(x) for x in re.findall(r"(?:KV|state) buffer size =\s*([\d.]+) MiB", log)]
    ctx = int(re.search(r"n_ctx\s*=\s*(\d+)", log).group(1))
    planned = kv_bytes(load_profile("tiny-v4").model.kv_cache, ctx) / 2**20
    assert mib and abs(sum(mib) - planned) <= 0.01 * len(mib) + 0.001 * planned, (mib, planned)
    compute = float(re.search(r"CPU compute buffer size =\s*([\d.]+) MiB", log).group(1))
    assert 0 < compute <= compute_bytes(ctx) / 2**20  # the planner's bound holds


@needs_llama
def test_both_engines_give_the_same_greedy_first_tokens(transformers_server, llama_server):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    hf = transformers_server.post("/v1/completions", body)["choices"][0]["text"]
    llama = llama_server.post("/v1/completions", body)["choices"][0]["text"]
    assert hf and hf == llama


def test_transformers_stops_cleanly(transformers_server):
    assert transformers_server.stop() == 0
    assert_all_gone(transformers_server.pgid, transformers_server.tmpdir, transformers_server.port)


@needs_llama
def test_llama_cpp_stops_cleanly(llama_server):
    assert llama_server.stop() == 0
    assert_all_gone(llama_server.pgid, llama_server.tmpdir, llama_server.port)


@pytest.mark.timeout(900)
def test_smoke_tiny_v4_on_a_cpu_picks_an_engine(dsv4serve_cmd):
    """No --engine: vLLM cannot run V4 here, so auto takes llama.cpp (or Transformers without it)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if LLAMA_SERVER:
        env["DSV4SERVE_LLAMA_SERVER"] = LLAMA_SERVER
    port = free_port()
    cli = Cli([*dsv4serve_cmd, "smoke", "tiny-v4", "--json", "--port", str(port)], env=env)
    assert cli.finish(880) == 0, "".join(cli.err[-40:])
    result = json.loads("".join(cli.out))
    assert result["engine"] == ("llama.cpp" if LLAMA_SERVER else "transformers")
    assert (result["reply"] + result["reasoning"]).strip() and result["stopped_cleanly"] is True
    if LLAMA_SERVER:  # smoke's DeepSeek-V4 checks, each on its own
        assert [c["name"] for c in result["checks"] if c["ok"]] == ["plain", "thinking", "tools"]
    assert_all_gone(result["pid"], port=port)


@needs_llama
@pytest.mark.timeout(600)
def test_llama_cpp_detached_with_a_key_ps_logs_stop(dsv4serve_cmd, tmp_path, monkeypatch):
    """`up -d` / `ps` / `logs` / `stop` through llama-server; its key reaches it in LLAMA_API_KEY only."""
    from dsv4serve.service import state
    from tests.test_service_live import KEY, assert_nothing_left, cli, cmdlines, status

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("DSV4SERVE_LLAMA_SERVER", LLAMA_SERVER)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    argv = ["up", "tiny-v4", "--engine", "llama.cpp", "-d", "--name", "gguf", "--port", str(port)]
    up = cli(dsv4serve_cmd, *argv, "--api-key-file", str(key_file), timeout=500)
    assert up.returncode == 0, up.stderr
    rec = state.read("gguf")
    try:
        assert rec is not None and rec.state == "ready"
        assert status(port, "/v1/models") == 401 and status(port, "/v1/models", KEY) == 200
        rows = json.loads(cli(dsv4serve_cmd, "ps", "--json").stdout)["servers"]
        assert [(r["name"], r["state"]) for r in rows] == [("gguf", "ready")]
        logs = cli(dsv4serve_cmd, "logs", "gguf", "--tail", "3")
        assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 3
        assert KEY not in cmdlines() + Path(rec.log).read_text() + up.stdout + up.stderr
    finally:
        stop = cli(dsv4serve_cmd, "stop", "gguf", timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert_nothing_left(rec)
