"""`dsv4serve bench` against a real server process (tests/health_server.py; the real vLLM with both
clients runs in bench/bench_serve.py): figures per level, the history, compare, bad input."""

from __future__ import annotations

import json

import pytest

from dsv4serve.bench import vllm_client
from dsv4serve.serving.launch import Server
from tests.test_health import free_port, spec


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    port = free_port()
    srv = Server(spec(port))
    srv.start()
    srv.wait_ready()
    yield f"http://127.0.0.1:{port}"
    srv.stop()


def test_bench_measures_each_level_keeps_the_run_and_compares(run_cli, server, tmp_path):
    args = ("bench", server + "/v1", "--client", "own", "--concurrency", "1,4", "--num-prompts", "8")
    drawn = tmp_path / "first.png"
    first = run_cli(*args, "--output-len", "6", "--json", "--label", "first", "--plot", str(drawn))
    assert first.exit_code == 0, first.stderr
    run = json.loads(first.stdout)
    assert f"wrote {drawn}" in first.stderr and drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run["model"], run["client"], run["label"], run["engine"]) == ("tiny", "own", "first", "unknown")
    assert [lv["concurrency"] for lv in run["levels"]] == [1, 4]
    for lv in run["levels"]:
        assert lv["requests"] == 8 and lv["errors"] == 0 and lv["output_tokens"] == 8 * 6
        assert lv["tokens_per_s"] > 0 and lv["requests_per_s"] > 0
        assert 0 < lv["ttft_mean_ms"] <= lv["ttft_p99_ms"] and lv["tpot_mean_ms"] > 0
        assert lv["tpot_p99_ms"] > 0
        assert lv["acceptance_rate"] is None  # this server drafts nothing
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    second = run_cli(*args, "--output-len", "3", "--dataset", str(dataset), "--json")
    assert second.exit_code == 0, second.stderr
    listed = run_cli("bench", "list", "--json")
    runs = json.loads(listed.stdout)["runs"]
    assert [r["id"] for r in runs] == [run["id"] + 1, run["id"]]
    assert runs[0]["dataset"] == str(dataset) and runs[0]["input_len"] == 0
    text = run_cli("bench", "list")
    assert f"#{run['id']} " in text.stdout and "TOK/S" in text.stdout
    compared = run_cli("bench", "compare", str(run["id"]), str(run["id"] + 1), "--json")
    assert compared.exit_code == 0, compared.stderr
    rows = json.loads(compared.stdout)["levels"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:  # B has half the output tokens per request
        assert row["ratio"]["tokens_per_s"] == pytest.approx(
            row["b"]["tokens_per_s"] / row["a"]["tokens_per_s"], 0.01
        )
    assert "(B/A)" in run_cli("bench", "compare", str(run["id"]), str(run["id"] + 1)).stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--concurrency", "0,8"), "--concurrency '0,8'"),
        (("--concurrency", "x"), "--concurrency 'x'"),
        (("--client", "mine"), "--client 'mine'"),
        (("--dataset", "/nonexistent.jsonl"), "--dataset /nonexistent.jsonl"),
        (("--plot", "/nonexistent/bench.png"), "--plot /nonexistent/bench.png: no directory"),
    ],
)
def test_bad_bench_options_are_usage_errors(run_cli, server, args, named):
    result = run_cli("bench", server, "--num-prompts", "1", *args)
    assert result.exit_code == 2 and named in result.stderr and "Traceback" not in result.stderr


def test_bench_names_what_is_missing(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert run_cli("bench", "compare", "1").exit_code == 2
    assert run_cli("bench", "compare", "1", "2").exit_code == 2  # no such runs
    assert run_cli("bench", "nosuchserver").exit_code == 2
    result = run_cli("bench", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 5 and "no OpenAI-compatible server answers" in result.stderr
    assert "no benchmark runs yet" in run_cli("bench", "list").stdout


def test_a_vllm_bench_serve_result_reads_as_the_same_figures():
    level = vllm_client.from_result(
        {
            "completed": 30,
            "failed": 2,
            "duration": 4.5,
            "total_output_tokens": 1920,
            "output_throughput": 426.7,
            "request_throughput": 6.67,
            "mean_ttft_ms": 41.2,
            "p99_ttft_ms": 90.0,
            "mean_tpot_ms": 8.1,
            "p99_tpot_ms": 12.5,
            "spec_decode_acceptance_rate": 71.5,
        },
        8,
    )
    assert (level.requests, level.errors, level.tokens_per_s, level.ttft_p99_ms) == (32, 2, 426.7, 90.0)
    assert (level.acceptance_rate, level.tpot_p99_ms) == (0.715, 12.5)
    argv = vllm_client.argv("http://h:1", "tiny", "/ckpt", 8, 32, 128, 64, None, "/tmp/x")
    assert argv[argv.index("--max-concurrency") + 1] == "8" and "--ignore-eos" in argv
    assert not any("key" in a.lower() for a in argv)  # the API key goes in its environment
