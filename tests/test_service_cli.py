"""`up -d`, `ps`, `logs`, `stop` and the API key: arguments, records and keys, without starting vLLM."""

from __future__ import annotations

import json
import os
import time

import pytest

from dsv4serve.service import keys, state
from dsv4serve.serving.ready import api_key
from dsv4serve.serving.spec import LaunchSpec
from tests.test_service_state import record as state_record

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(keys.ENV_NAME, raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


def record(name: str, **changes) -> state.Record:
    """A record of a server this test process stands in for (its supervisor: us, alive), up 65 s."""
    base = {"host": "0.0.0.0", "port": 8123, "log": "", "started_at": time.time() - 65, "state": "ready"}
    return state_record(name, **{**base, **changes})


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("stop",), "name one server or give --all"),
        (("stop", "a", "--all"), "name one server or give --all"),
        (("stop", "nosuch"), "no server named 'nosuch'"),
        (("logs", "nosuch"), "no server named 'nosuch'"),
        (("logs", "x", "--tail", "-1"), "--tail"),
        (("up", "tiny", "-d", "--name", "../etc"), "bad server name"),
        (("up", "tiny", "-d", "--nodes", "2", "--master-addr", "127.0.0.1"), "--detach serves one node"),
        (("up", "tiny", "--api-key-file", "/nonexistent/key"), "--api-key-file /nonexistent/key"),
    ],
)
def test_bad_service_arguments_exit_2(run_cli, args, words):
    result = run_cli(*args)
    assert result.exit_code == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_ps_lists_records_as_they_are_now(run_cli):
    assert json.loads(run_cli("ps", "--json").stdout) == {"servers": []}
    assert "no detached servers" in run_cli("ps").stdout
    state.write(record("live"))
    state.write(record("stale", supervisor_start=state.start_time(os.getpid()) - 1, state="loading"))
    rows = {row["name"]: row for row in json.loads(run_cli("ps", "--json").stdout)["servers"]}
    assert rows["live"]["state"] == "ready" and rows["live"]["uptime_s"] >= 65
    assert rows["live"]["endpoint"] == "http://127.0.0.1:8123/v1"  # 0.0.0.0 is reached on loopback
    assert rows["stale"]["state"] == "failed" and rows["stale"]["uptime_s"] is None
    text = run_cli("ps").stdout
    assert "live " in text and "1m0" in text and "stale" in text and "failed" in text


def test_logs_prints_the_tail(run_cli, tmp_path):
    log = tmp_path / "v.log"
    log.write_text("one\ntwo\nthree\n")
    state.write(record("srv", log=str(log)))
    assert run_cli("logs", "srv").stdout == "one\ntwo\nthree\n"
    assert run_cli("logs", "srv", "--tail", "2").stdout == "two\nthree\n"


def test_stop_of_a_stale_record_removes_it(run_cli):
    state.write(record("stale", supervisor_start=state.start_time(os.getpid()) - 1))
    result = run_cli("stop", "--all", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stopped"][0]["stopped"] is True
    assert state.read_all() == []


def test_the_key_comes_from_the_file_then_the_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\nignored\n")
    assert keys.read_api_key(str(key_file)) == KEY
    assert keys.read_api_key(None) is None
    monkeypatch.setenv(keys.ENV_NAME, "from-env-key")
    assert keys.read_api_key(None) == "from-env-key"
    assert keys.read_api_key(str(key_file)) == KEY  # the file wins
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(keys.UsageError, match="empty"):
        keys.read_api_key(str(empty))
    monkeypatch.setenv(keys.ENV_NAME, "two words")
    with pytest.raises(keys.UsageError, match="spaces") as err:
        keys.read_api_key(None)
    assert "two words" not in err.value.message + err.value.hint


def test_the_key_goes_to_vllm_through_its_environment_and_to_the_probe():
    spec = LaunchSpec(
        argv=("python", "-m", "vllm", "--port", "1"),
        host="h",
        port=1,
        served_model_name="m",
        startup_timeout_s=1,
    )
    assert api_key(spec) is None
    keyed = keys.with_key(spec, KEY)
    assert keyed.env["VLLM_API_KEY"] == KEY and KEY not in keyed.argv
    assert api_key(keyed) == KEY
    argv_keyed = LaunchSpec(
        argv=("vllm", "--api_key=abc"), host="h", port=1, served_model_name="m", startup_timeout_s=1
    )
    assert api_key(argv_keyed) == "abc"


@pytest.mark.parametrize(
    ("host", "key", "warns"),
    [
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("10.1.2.3", None, True),
        ("0.0.0.0", KEY, False),
    ],
)
def test_a_non_loopback_host_without_a_key_warns(host, key, warns):
    warning = keys.exposure_warning(host, key)
    assert (warning is not None) == warns
    if warning:
        assert warning.startswith("WARNING") and host in warning


def test_up_dry_run_warns_about_an_open_host_and_never_prints_the_key(run_cli, tmp_path, monkeypatch):
    result = run_cli("up", "tiny", "--dry-run", "--host", "0.0.0.0")
    assert result.exit_code == 0, result.stderr
    assert "WARNING: serving on 0.0.0.0 without an API key" in result.stderr
    local = run_cli("up", "tiny", "--dry-run")
    assert local.exit_code == 0 and "WARNING" not in local.stderr
    monkeypatch.setenv(keys.ENV_NAME, KEY)
    keyed = run_cli("up", "tiny", "--dry-run", "--host", "0.0.0.0", "--json")
    assert keyed.exit_code == 0 and KEY not in keyed.stdout + keyed.stderr
    assert "WARNING" not in keyed.stderr
    json.loads(keyed.stdout)


def test_the_calm_console_shows_phases_as_lines_when_piped_and_a_display_on_a_terminal():
    import io

    from dsv4serve.service.console import PhaseDisplay

    piped = io.StringIO()
    display = PhaseDisplay(piped)  # a StringIO is no terminal
    display.phase("loading weights", 1.25)
    display.progress("kernel warmup: DeepGEMM 412/1131 (36%)", 9.0)
    display.close()
    assert piped.getvalue() == (
        "dsv4serve: [    1.2 s] loading weights\n"
        "dsv4serve: [    9.0 s] kernel warmup: DeepGEMM 412/1131 (36%)\n"
    )
    term = io.StringIO()
    live = PhaseDisplay(term, live=True)
    live.phase("kernel warmup", 2.0)
    live.progress("kernel warmup: DeepGEMM 412/1131 (36%)", 3.0)
    task = live._progress.tasks[0]
    assert (task.completed, task.total, task.description) == (412, 1131, "kernel warmup: DeepGEMM")
    live.close()
    assert "dsv4serve: [    2.0 s] kernel warmup" in term.getvalue()


def test_the_ready_curl_line_of_a_keyed_server_names_the_variable_not_the_key():
    from dsv4serve.serving.chat import curl_line as _curl_line

    plain = _curl_line("http://127.0.0.1:8000", "tiny")
    keyed = _curl_line("http://127.0.0.1:8000", "tiny", keyed=True)
    assert "Authorization" not in plain
    assert '-H "Authorization: Bearer $DSV4SERVE_API_KEY"' in keyed
    assert keyed.replace(' -H "Authorization: Bearer $DSV4SERVE_API_KEY"', "") == plain
