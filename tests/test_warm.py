"""The traffic warm-up before ready (serving/warm.py), against a real HTTP server on 127.0.0.1 that
records what it was sent: the rounds' concurrency, distinct prompts, one long prompt, failures."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dsv4serve.profiles.load import load_profile
from dsv4serve.serving import warm
from dsv4serve.serving.prepare import warm_rounds
from dsv4serve.serving.spec import LaunchSpec


class _Recorder(BaseHTTPRequestHandler):
    lock = threading.Lock()
    active = 0
    last = 0.0
    peak = 0
    prompts: list[str] = []
    fail = False

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            cls.prompts.append(body["prompt"])
            cls.last = time.monotonic()
        # hold the answer while a round's requests still arrive (a gap of 0.5 s ends the wait), so the
        # peak is the round's size however slowly a loaded machine starts the client's threads
        while cls.active < 64 and time.monotonic() - cls.last < 0.5:
            time.sleep(0.01)
        with cls.lock:
            cls.active -= 1
        if cls.fail:
            self.send_response(500)
            self.end_headers()
            return
        out = json.dumps({"choices": [{"text": "x" * body["max_tokens"]}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 64 clients connect at once (socketserver's default backlog is 5)


@pytest.fixture
def server():
    _Recorder.active, _Recorder.peak, _Recorder.prompts, _Recorder.fail = 0, 0, [], False
    httpd = _Server(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_rounds_reach_their_concurrency_with_prompts_of_their_own(server):
    said = []
    done = warm.warm_traffic(server, "m", (1, 8, 64), timeout_s=30, say=said.append)
    assert [what for what, _ in done] == [
        "1 x 1500-word prompt",
        "1 concurrent",
        "8 concurrent",
        "64 concurrent",
    ]
    assert len(_Recorder.prompts) == 1 + 1 + 8 + 64
    assert len(set(_Recorder.prompts)) == len(_Recorder.prompts)  # no prefix-cache hit between requests
    assert _Recorder.peak == 64  # the last round's requests were all in flight at once
    assert max(len(p.split()) for p in _Recorder.prompts) > 1500 and len(said) == 4


def test_a_failed_round_is_an_error(server):
    _Recorder.fail = True
    with pytest.raises(OSError, match="8 of 8 warm-up requests failed"):
        warm.run_round(server, "m", 8, 4, timeout_s=10)


class _Plan:
    def __init__(self, device):
        self.device = device


def test_the_warm_up_is_on_for_deepseek_v4_on_gpus_only():
    v4, tiny = load_profile("tiny-v4"), load_profile("tiny")
    assert warm_rounds(v4, _Plan("cuda"), None) == (1, 8, 64)
    assert warm_rounds(tiny, _Plan("cpu"), None) == ()
    assert warm_rounds(v4, _Plan("cuda"), False) == () and warm_rounds(tiny, _Plan("cpu"), True) == (1, 8, 64)


def test_the_detached_supervisor_keeps_the_rounds():
    from dsv4serve.service.supervisor import spec_from_dict, spec_to_dict

    spec = LaunchSpec(
        argv=("x",),
        host="127.0.0.1",
        port=1,
        served_model_name="m",
        startup_timeout_s=1.0,
        warm_rounds=(1, 8),
    )
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec
