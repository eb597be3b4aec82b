"""`route --flash tiny --pro tiny`: one command starts two real vLLM servers (CPU build) and the router,
and stops them all; a member that dies while serving stops the router (exit 5), leaving nothing."""

from __future__ import annotations

import os
import re
import signal
import stat
import time

import pytest

from tests.router_servers import FakeUpstream, free_port
from tests.test_router_live import CLIENT, Process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PROFILE = """\
name: pair
classifier: {prompt: "Classify: complex = code or calculation; else simple."}
rules:
  - {name: pro-tag, route: pro, when: {contains: ["#pro"]}}
  - {name: rest, route: flash, when: {min_chars: 0}}
"""


def env_for(home) -> dict[str, str]:
    return {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "HF_HOME": str(home / ".cache" / "huggingface"),
    }


def group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                return True
    return False


def started_groups(text: str) -> dict[str, int]:
    """{member: vLLM process group} from the `NAME: vLLM started: pid P (process group G)` lines."""
    return {
        m[0]: int(m[1]) for m in re.findall(r"^(flash|pro): vLLM started: .*process group (\d+)", text, re.M)
    }


def chat(url: str, text: str):
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return CLIENT.post(url + "/v1/chat/completions", json=body)


def test_one_command_starts_both_serves_and_stops_all(tmp_path):
    profile = tmp_path / "pair.yaml"
    profile.write_text(PROFILE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    route = Process(
        ["route", str(profile), "--flash", "tiny", "--pro", "tiny", "--port", str(port), "--workers", "2"],
        tmp_path / "route.log",
        env_for(tmp_path),
    )
    try:
        route.wait_for(url + "/v1/models", 400)
        text = route.log.read_text()
        groups = started_groups(text)
        assert set(groups) == {"flash", "pro"}, text
        assert f"flash: tiny on 127.0.0.1:{port + 1}" in text and f"pro: tiny on 127.0.0.1:{port + 2}" in text
        to_pro, to_flash = chat(url, "#pro say hi"), chat(url, "say hi")
        assert (to_pro.status_code, to_pro.headers["x-dsv4serve-route"]) == (200, "pro"), to_pro.text
        assert (to_flash.status_code, to_flash.headers["x-dsv4serve-route"]) == (200, "flash")
        assert to_pro.json()["choices"][0]["message"] is not None
        logs = {name: re.search(rf"^{name}: tiny on .*, log (\S+)$", text, re.M)[1] for name in groups}
        assert logs["flash"] != logs["pro"]
        for log in logs.values():
            assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
            assert os.path.getsize(log) > 0  # each member's vLLM output, in a file of its own
    finally:
        code = route.stop()  # SIGINT to the router's group: as Ctrl-C in a terminal
    assert code == 0, route.tail()
    for name, pgid in groups.items():
        assert not group_alive(pgid), f"{name}'s vLLM outlived the router"


def test_a_member_that_dies_stops_the_router_with_its_name(tmp_path):
    flash = FakeUpstream("flash-model")  # a running Flash given by URL; Pro started by the router
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    route = Process(
        ["route", "--flash", flash.url, "--pro", "tiny", "--port", str(port)],
        tmp_path / "route.log",
        env_for(tmp_path),
    )
    try:
        route.wait_for(url + "/v1/models", 300)
        (pgid,) = started_groups(route.log.read_text()).values()
        os.killpg(pgid, signal.SIGKILL)  # Pro's vLLM dies under the router
        route.proc.wait(60)
    finally:
        code = route.stop()
        flash.close()
    text = route.log.read_text()
    assert code == 5, text
    assert "error: pro (vLLM) exited with code" in text and "the router stopped" in text
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(pgid)
