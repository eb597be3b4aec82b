"""The state record of a detached server: atomic writes, dead and reused pids, and stop of what a killed
supervisor left behind (real processes: sleep in a session of its own stands in for vLLM's group)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dsv4serve.engines.vllm.startup_log import PHASES
from dsv4serve.errors import UsageError
from dsv4serve.service import ops, state
from dsv4serve.service.detach import claim


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "dsv4serve" / "servers"


def record(name="tiny", **changes) -> state.Record:
    me = os.getpid()
    base = dict(
        name=name,
        profile="tiny",
        supervisor_pid=me,
        supervisor_start=state.start_time(me),
        host="127.0.0.1",
        port=8000,
        log="/nonexistent.log",
        started_at=time.time(),
        plan_digest="0123456789abcdef",
    )
    return state.Record(**{**base, **changes})


def test_a_record_is_written_private_and_read_back(state_home):
    written = record(gpus=("GPU-1", "GPU-2"), gpu_memory_before=(("GPU-1", 5), ("GPU-2", 7)), state="loading")
    path = state.write(written)
    assert path == state_home / "tiny.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(state_home).st_mode & 0o777 == 0o700
    assert state.read("tiny") == written
    assert [r.name for r in state.read_all()] == ["tiny"]
    assert os.listdir(state_home) == ["tiny.json"]  # no temporary file left


def test_readers_never_see_half_a_record(state_home):
    big = record(error={"message": "x" * 200_000, "hint": "", "exit_code": 5})
    state.write(big)
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            seen.append(json.loads((state_home / "tiny.json").read_text())["phase"])

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(200):
        state.write(dataclasses.replace(big, phase=f"p{i}"))
    stop.set()
    thread.join()
    assert seen  # every read parsed (a torn file raises in the reader's json.loads)


def test_a_failed_write_keeps_the_old_record(state_home):
    state.write(record(phase="loading weights"))
    with pytest.raises(TypeError):
        state.write(record(error={"bad": object()}))  # json cannot write it
    assert state.read("tiny").phase == "loading weights"
    assert os.listdir(state_home) == ["tiny.json"]


def test_a_dead_pid_is_not_alive_and_its_server_shows_failed():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = state.start_time(child.pid)
    child.wait()
    assert started is not None and not state.alive(child.pid, started)
    stale = record(supervisor_pid=child.pid, supervisor_start=started, state="ready")
    assert not stale.supervisor_alive() and stale.shown_state() == "failed"


def test_a_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = False
    for _ in range(200):  # the child exits; unreaped, it is a zombie with its pid still taken
        time.sleep(0.05)
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                zombie = True
                break
    assert zombie and state.start_time(child.pid) is None
    child.wait()


def test_a_reused_pid_is_not_the_process_recorded():
    me = os.getpid()
    assert state.alive(me, state.start_time(me))
    # Our pid, as another process that started earlier had it: the start time tells them apart.
    assert not state.alive(me, state.start_time(me) - 1)
    assert not record(supervisor_start=state.start_time(me) - 1).supervisor_alive()


def test_every_startup_phase_has_a_state():
    assert {state.state_of_phase(name) for name, _ in PHASES} <= set(state.STATES)
    assert state.state_of_phase("loading weights") == "loading"
    assert state.state_of_phase("kernel warmup") == "warming"
    assert state.state_of_phase("ready") == "ready"


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "../up", "a b", "x" * 65, "é"])
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError):
        state.check_name(name)


def test_unreadable_records_are_skipped(state_home):
    state.write(record("good"))
    (state_home / "bad.json").write_text("{not json")
    (state_home / "odd.json").write_text(json.dumps({"name": "odd"}))
    assert [r.name for r in state.read_all()] == ["good"]


def test_a_running_name_is_refused_and_a_stale_one_is_taken_over():
    state.write(record("busy"))
    with pytest.raises(UsageError, match="busy") as err:
        claim("busy")
    assert err.value.exit_code == 2
    state.write(record("stale", supervisor_start=state.start_time(os.getpid()) - 1))
    claim("stale")
    assert state.read("stale") is None


def test_stop_after_a_killed_supervisor_stops_what_is_left():
    # vLLM's group as a killed supervisor leaves it if its watchdog also died: a session of its own.
    group = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.2)
        assert len(ops.procs.group_members(group.pid)) == 3
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead_start = state.start_time(dead.pid)
        dead.wait()
        stale = record(
            supervisor_pid=dead.pid,
            supervisor_start=dead_start,
            pgid=group.pid,
            pgid_start=state.start_time(group.pid),
        )
        state.write(stale)
        said = []
        result = ops.stop(stale, said.append)
        assert result == {"name": "tiny", "stopped": True, "processes_left": [], "gpu_memory_held": []}
        assert ops.procs.group_members(group.pid) == []
        assert state.read("tiny") is None
        assert any(f"process group {group.pid}" in line for line in said)
    finally:
        if ops.procs.group_members(group.pid):
            os.killpg(group.pid, signal.SIGKILL)
        group.wait()


def test_tail_and_follow_read_the_log(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert ops.tail(str(log), 3) == ["line 7", "line 8", "line 9"]
    assert len(ops.tail(str(log), -1)) == 10 and ops.tail(str(log), 0) == []
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_start = state.start_time(gone.pid)
    gone.wait()
    # Its supervisor is gone: follow prints the end and returns instead of waiting forever.
    lines = list(ops.follow(record(log=str(log), supervisor_pid=gone.pid, supervisor_start=gone_start), 2))
    assert lines == ["line 8", "line 9"]
