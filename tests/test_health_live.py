"""Faults of a real vLLM (CPU build, tiny profile) while it serves, and the health watch that sees them.

- A stuck engine core: SIGSTOP of vLLM's EngineCore under load. /health stays 200 and nothing is
  generated; `up --on-unhealthy restart` sees it within the stall window, kills the group (the client
  whose stream was cut gets an error, never a short answer that looks whole), starts vLLM again, and a
  request after that succeeds.
- Memory growth: a helper process in vLLM's process group allocates; the watch flags it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dsv4serve.serving import procs
from dsv4serve.serving.health import MIB, RUNNING, WatchConfig, parse_metrics, pick
from dsv4serve.serving.spec import Event
from dsv4serve.serving.supervise import Supervision
from tests.test_launch import Cli, assert_all_gone, chat, free_port

STALL_S = 8


def engine_core(pgid: int) -> int:
    """vLLM's engine process in the group (its process title is VLLM::EngineCore)."""
    for pid in procs.group_members(pgid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("VLLM::EngineCor"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no EngineCore in group {pgid}: {procs.group_members(pgid)}")


def stream(port: int, seen: dict) -> None:
    """A long streamed completion; what its client saw: chunks, [DONE], or the error."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1900, "ignore_eos": True, "stream": True}
    seen["chunks"] = 0
    try:
        with httpx.Client(trust_env=False, timeout=120) as client:  # noqa: SIM117
            with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line == "data: [DONE]":
                        seen["done"] = True
                    elif line.startswith("data: "):
                        seen["chunks"] += 1
    except httpx.HTTPError as err:
        seen["error"] = type(err).__name__
    seen["ended"] = True


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_stopped_engine_core_is_seen_restarted_and_its_client_told(dsv4serve_cmd):
    port = free_port()
    cli = Cli(
        [*dsv4serve_cmd, "up", "tiny", "--json", "--port", str(port), "--on-unhealthy", "restart"]
        + ["--stall-s", str(STALL_S), "--max-restarts", "1"]
    )
    pgid, _ = cli.started()
    try:
        cli.wait_for(r'"event": "ready"', 240, stream="out")
        assert chat(port)
        clients = [{} for _ in range(3)]  # under load: three streams at once
        for seen in clients:
            threading.Thread(target=stream, args=(port, seen), daemon=True).start()
        # All three generating, as vLLM counts them: on a starved 2-core machine the API server may
        # hand a client its whole stream in one burst at the end, so the clients' chunks cannot tell.
        wait_running(port, clients, 60)
        core = engine_core(pgid)
        os.kill(core, signal.SIGSTOP)
        stopped_at = time.monotonic()
        # Two more arrive while it is stuck: whatever the first three managed (on a quiet machine they
        # can finish before the stop lands), these are cut for sure. The ones the stop cut are those
        # still open a moment after it (the core makes no more tokens).
        for seen in (late := [{}, {}]):
            threading.Thread(target=stream, args=(port, seen), daemon=True).start()
        clients += late
        time.sleep(1.0)
        cut = [seen for seen in clients if not seen.get("ended")]
        assert all(any(seen is c for c in cut) for seen in late), clients
        assert httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=5).status_code == 200
        m = cli.wait_for(r"health: stalled: (.*)", 60)
        seen_after = time.monotonic() - stopped_at
        # Within the window and the checks that see it (a quarter of it apart), with room for a busy machine.
        assert seen_after < STALL_S + STALL_S / 4 + 10, (seen_after, m.group(1))
        assert "no token for" in m.group(1) or "probe got no token" in m.group(1)
        cli.wait_for(r"restarting in \d+ s \(1 of 1\)", 30)
        assert procs.wait_group_gone(pgid, 10.0)  # the stuck group was killed, the stopped process too
        end = time.monotonic() + 30
        while not all(seen.get("ended") for seen in clients):
            assert time.monotonic() < end, clients
            time.sleep(0.2)
        for seen in cut:  # every cut stream ended in an error, none looked finished
            assert seen.get("error") and not seen.get("done"), seen
        cli.wait_for(r"restarted \(1 of 1\): ready", 240)
        m = cli.wait_for(r"vLLM started: pid (\d+)", 5)
        new = [int(x) for x in re.findall(r"vLLM started: pid (\d+)", "".join(cli.err))][-1]
        assert new != pgid and procs.group_members(new), m.group(0)
        assert chat(port)  # after the restart it serves
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.finish(40) == 0
        assert_all_gone(new, port=port)
    finally:  # a failed assertion must not leave up and its restarted vLLM running
        stop_cli(cli)


def wait_running(port: int, clients: list[dict], limit: float) -> None:
    """Until every client is generating: its chunks arrive, or vLLM's /metrics counts them running."""
    end = time.monotonic() + limit
    running = None
    while not all(seen.get("chunks", 0) >= 5 for seen in clients):
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=5).text
            running = pick(parse_metrics(text), RUNNING)
            if running is not None and running >= len(clients):
                return
        assert time.monotonic() < end, (running, clients)
        time.sleep(0.02)


def stop_cli(cli: Cli) -> None:
    """Stop `up` (it stops its own vLLM group) if the test left it running; kill it if it hangs."""
    if cli.proc.poll() is None:
        cli.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            cli.finish(40)


HELPER = str(Path(__file__).with_name("grow_helper.py"))


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_a_helper_allocating_in_vllms_group_is_memory_growth():
    import dataclasses

    from dsv4serve.serving.prepare import prepare_launch

    port = free_port()
    _, spec = prepare_launch("tiny", port=port, progress=False)
    spec = dataclasses.replace(
        spec,
        argv=(sys.executable, HELPER, str(port), *spec.argv),  # a helper in vLLM's group allocates
        health=WatchConfig(policy="warn", stall_s=30.0, interval_s=2.0, memory_margin_bytes=192 * MIB),
    )
    events: list[Event] = []
    supervision = Supervision(spec, events.append)
    done = threading.Thread(target=lambda: _run_quietly(supervision), daemon=True)
    done.start()
    try:
        end = time.monotonic() + 330
        while not any(e.kind == "warning" and "health: memory-growth" in e.text for e in events):
            assert time.monotonic() < end and done.is_alive(), [e.text for e in events][-20:]
            time.sleep(1.0)
        flagged = next(e.text for e in events if "health: memory-growth" in e.text)
        assert "past the 192 MiB margin" in flagged
        status = supervision.watch.status()
        assert status["health"] == "memory-growth" and status["memory_growth_bytes"] > 192 * MIB
        assert status["generated_tokens"] is not None  # vLLM's counters were read
        log = Path(spec.log_path).read_text()
        assert "dsv4serve: " in log and "health: memory-growth" in log  # in the log too
    finally:
        supervision.stop()
    assert procs.group_members(supervision.server.pgid) == []
    json.dumps(status)  # what ps --json would show is plain data


def _run_quietly(supervision: Supervision) -> None:
    with contextlib.suppress(Exception):  # the test's thread asserts on the events
        supervision.run()
