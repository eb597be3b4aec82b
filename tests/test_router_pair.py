"""`route --flash PROFILE --pro PROFILE`: both planned before anything starts, on GPUs of their own.

Planning runs against declared GPUs (--hardware) or the CPU path; the start itself is in
tests/test_router_pair_live.py (two real tiny vLLM servers)."""

from __future__ import annotations

import pytest

from dsv4serve.hardware.inventory import Gpu
from dsv4serve.profiles.load import load_profile
from dsv4serve.router.pair import Member, default_gpus, is_url, plan_members

GIB = 1 << 30


def gpus(n: int, gib: int = 141, name: str = "NVIDIA H200") -> tuple[Gpu, ...]:
    return tuple(Gpu(i, name, "", gib * GIB, gib * GIB, 0, "9.0") for i in range(n))


def test_flash_takes_the_fewest_gpus_its_profile_allows_and_pro_the_rest():
    flash, pro = load_profile("flash"), load_profile("pro")
    assert default_gpus(flash, gpus(8), set()) == "2"  # flash's smallest rule: 2x H200
    assert default_gpus(pro, gpus(8), {0, 1}) == "2,3,4,5,6,7,"
    assert default_gpus(pro, gpus(2), {0}) == "1,"  # GPU 1, not "1" (a count: any one GPU)
    assert default_gpus(flash, gpus(1), set()) == "1"  # fewer than its rules want: the planner says no
    assert default_gpus(pro, gpus(2), {0, 1}) == ""  # nothing left
    assert default_gpus(load_profile("tiny"), (), set()) is None  # the CPU path
    h100 = gpus(8, 80, "NVIDIA H100 80GB HBM3")
    assert default_gpus(flash, h100, set()) == "4"  # flash's 2-GPU rule wants 135 GiB each


def test_urls_and_profiles():
    assert is_url("http://127.0.0.1:8001") and is_url("https://flash.internal/v1")
    assert not is_url("flash") and not is_url("./my-flash.yaml")


def test_both_planned_on_their_own_gpus_before_anything_starts():
    members = [Member("flash", "tiny-v4", 8001), Member("pro", "tiny-v4", 8002)]
    planned = plan_members(members, (), "4xH200")
    (_, _, flash), (_, _, pro) = planned
    assert [g.index for g in flash.gpus] == [0]  # tiny-v4's smallest rule: one GPU
    assert [g.index for g in pro.gpus] == [1, 2]  # of the 3 left, as its largest rule (TP 2) uses
    assert "--port" in flash.args and flash.args[flash.args.index("--port") + 1] == "8001"
    assert pro.args[pro.args.index("--port") + 1] == "8002"


def test_one_gpu_each_when_two_are_visible():
    members = [Member("flash", "tiny-v4", 8001), Member("pro", "tiny-v4", 8002)]
    (_, _, flash), (_, _, pro) = plan_members(members, (), "2xH200")
    assert ([g.index for g in flash.gpus], [g.index for g in pro.gpus]) == ([0], [1])
    assert pro.env and dict(pro.env)["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_real_pair_does_not_fit_one_8_gpu_h200_node_and_says_what_to_do(run_cli):
    result = run_cli("route", "--flash", "flash", "--pro", "pro", "--hardware", "8xH200", "--dry-run")
    assert result.exit_code == 3
    assert "--- flash: flash on 127.0.0.1:8001" in result.stdout and "fits on 2x H200" in result.stdout
    assert "--- pro: pro on 127.0.0.1:8002" in result.stdout
    line = result.stderr.strip().splitlines()
    assert line[0].startswith("error: pro (pro): pro needs more memory than 6x H200 gives")
    assert "pass its URL (--pro http://HOST:PORT)" in result.stderr


def test_no_gpu_left_for_pro(run_cli):
    result = run_cli("route", "--flash", "flash", "--pro", "pro", "--hardware", "2xH200", "--dry-run")
    assert result.exit_code == 3
    assert "error: pro (pro): no GPU is left: flash (2 GPUs) takes every visible GPU" in result.stderr


def test_a_shared_gpu_needs_room_for_both(tmp_path, run_cli):
    big = tmp_path / "big.yaml"
    big.write_text("extends: tiny-v4\nname: big\nserve: {gpu_memory_utilization: 0.8}\n")
    args = ["--flash-gpus", "0,", "--pro-gpus", "0,", "--hardware", "1xH200", "--dry-run"]
    ok = run_cli("route", "--flash", "tiny-v4", "--pro", "tiny-v4", *args)
    assert ok.exit_code == 0, ok.stderr  # 0.3 + 0.3 of one GPU
    both = run_cli("route", "--flash", "tiny-v4", "--pro", str(big), *args)
    assert both.exit_code == 3
    assert "flash and pro share GPU 0 and plan to take 30% + 80% of its memory; 100% is free" in both.stderr


def test_the_tiny_pair_plans_on_the_cpu_with_ports_after_the_routers(run_cli):
    result = run_cli("route", "--flash", "tiny", "--pro", "tiny", "--port", "9000", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "--- flash: tiny on 127.0.0.1:9001" in result.stdout
    assert "--- pro: tiny on 127.0.0.1:9002" in result.stdout
    assert result.stdout.count("verdict: fits on the CPU") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--flash", "tiny", "--explain", "hi"], "--explain asks running servers"),
        (["--flash", "tiny", "--pro", "tiny", "--hardware", "2xH200"], "--hardware only plans"),
        (["--flash", "http://127.0.0.1:1", "--pro", "http://127.0.0.1:2", "--dry-run"], "give a profile"),
        (["--flash", "tiny", "--pro", "tiny", "--flash-gpus", "²"], "not a GPU index or UUID"),
        (["--flash", "nosuchprofile", "--pro", "tiny", "--dry-run"], "flash (nosuchprofile)"),
    ],
)
def test_bad_pair_options_are_one_line_usage_errors(run_cli, args, message):
    result = run_cli("route", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr


def test_gpu_options_of_route_are_named_as_written(run_cli):
    result = run_cli("route", "--flash", "tiny", "--pro", "tiny", "--pro-gpus", "0")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --pro-gpus 0: a server needs at least one GPU",
        "hint: for GPU 0 write --pro-gpus 0,",
    ]


def test_members_on_one_gpu_start_one_after_the_other():
    from dsv4serve.router.pair import share_a_gpu

    members = [Member("flash", "tiny-v4", 8001, "0,"), Member("pro", "tiny-v4", 8002, "0,")]
    assert share_a_gpu(plan_members(members, (), "2xH200"))
    apart = [Member("flash", "tiny-v4", 8001), Member("pro", "tiny-v4", 8002)]
    assert not share_a_gpu(plan_members(apart, (), "2xH200"))


def _listening() -> tuple[object, int]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_busy_ports_stop_the_pair_before_any_server_starts(run_cli):
    sock, port = _listening()
    with sock:
        router_busy = run_cli("route", "--flash", "tiny", "--pro", "tiny", "--port", str(port))
        assert router_busy.exit_code == 5
        assert f"port {port} on 127.0.0.1 is already in use" in router_busy.stderr
        flash_busy = run_cli("route", "--flash", "tiny", "--pro", "tiny", "--port", str(port - 1))
        assert flash_busy.exit_code == 5
        assert f"error: flash: port {port} on 127.0.0.1 is already in use" in flash_busy.stderr
        assert f"--flash-port {port + 10}" in flash_busy.stderr
    for result in (router_busy, flash_busy):
        assert "vLLM started" not in result.stderr


def test_the_router_and_its_servers_need_ports_of_their_own(run_cli):
    result = run_cli("route", "--flash", "tiny", "--pro", "tiny", "--port", "9000", "--pro-port", "9001")
    assert result.exit_code == 2
    assert "need ports of their own, not [9000, 9001, 9001]" in result.stderr
