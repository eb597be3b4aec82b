"""doctor: each check against the real machine and real files, the exit code, the time, no secret shown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from dsv4serve.doctor import checks as doctor


def _checks(result) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for check in json.loads(result.stdout)["checks"]:
        by_name.setdefault(check["name"], []).append(check)
    return by_name


def _has_nvml() -> bool:
    from dsv4serve.errors import DsvError
    from dsv4serve.hardware import inventory as hardware

    try:
        return bool(hardware.read_inventory().gpus)
    except DsvError:
        return False


def test_every_check_reported_and_json_agrees_with_exit_code(run_cli):
    result = run_cli("doctor", "tiny", "--port", str(_free_port()), "--json")
    data = json.loads(result.stdout)
    names = [c["name"] for c in data["checks"]]
    for name in ("driver", "vllm", "disk", "hf_token", "port", "hub_cache", "jit_cache", "log_dir"):
        assert name in names
    assert all(c["status"] in ("ok", "warn", "fail") for c in data["checks"])
    failing = [c["exit_code"] for c in data["checks"] if c["status"] == "fail"]
    assert result.exit_code == data["exit_code"] == (failing[0] if failing else 0)
    assert data["ok"] is (not failing)


@pytest.mark.skipif(_has_nvml(), reason="this machine has NVIDIA GPUs: the no-GPU path is not taken")
def test_no_gpu_warns_for_cpu_profile_and_fails_gpu_profile_with_exit_3(run_cli):
    port = str(_free_port())
    tiny = run_cli("doctor", "tiny", "--port", port, "--json")
    assert _checks(tiny)["driver"][0]["status"] == "warn"
    flash = run_cli("doctor", "flash", "--port", port)
    assert flash.exit_code == 3
    assert "FAIL  driver" in flash.stdout and "hint:" in flash.stdout


def test_busy_port_fails_with_the_launch_exit_code(run_cli):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("doctor", "tiny", "--port", str(port), "--json")
    port_check = _checks(result)["port"][0]
    assert port_check["status"] == "fail" and str(port) in port_check["detail"]
    assert result.exit_code == 5


def test_unwritable_cache_fails_without_creating_anything(run_cli, isolated_home, monkeypatch):
    blocker = isolated_home / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    monkeypatch.setenv("HF_HOME", str(isolated_home / "hf"))  # the hub cache stays writable
    result = run_cli("doctor", "tiny", "--port", str(_free_port()), "--json")
    checks = _checks(result)
    assert [checks[n][0]["status"] for n in ("hub_cache", "jit_cache", "log_dir")] == ["ok", "fail", "fail"]
    assert result.exit_code == 5
    assert not (isolated_home / "hf").exists()  # doctor only looks


def test_hf_token_presence_never_its_value(run_cli, monkeypatch, isolated_home):
    secret = "hf_doctorSECRETvalue123"
    monkeypatch.setenv("HF_TOKEN", secret)
    result = run_cli("doctor", "--port", str(_free_port()), "--json")
    assert _checks(result)["hf_token"][0]["status"] == "ok"
    assert secret not in result.stdout + result.stderr
    monkeypatch.delenv("HF_TOKEN")
    assert doctor.check_token().status == "warn"
    token_file = isolated_home / ".cache" / "huggingface" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(secret + "\n")
    check = doctor.check_token()
    assert check.status == "ok" and secret not in check.detail


@pytest.mark.parametrize(
    ("installed", "status", "code"),
    [(None, "fail", 5), ("0.19.1", "fail", 2), ("0.20.0", "ok", 0), ("0.26.0", "ok", 0)],
)
def test_vllm_version_against_the_profile_minimum(tmp_path, installed, status, code):
    """The preview's V4 minimum 0.20.0 (flash, the 0731 release, needs 0.25.0: below)."""
    from dsv4serve.profiles.load import load_profile

    if installed:  # a real dist-info directory, read the way doctor reads the installed one
        info = tmp_path / f"vllm-{installed}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {installed}\n\n")
    flash = load_profile("flash-preview")
    assert flash.serve.min_vllm_version == "0.20.0"
    check = doctor.check_vllm(flash, paths=[str(tmp_path)])
    assert (check.status, check.exit_code) == (status, code)


@pytest.mark.parametrize(("installed", "code"), [("0.20.0", 2), ("0.24.1", 2), ("0.25.0", 0), ("0.32.0", 0)])
def test_the_official_releases_need_vllm_0_25(tmp_path, installed, code):
    from dsv4serve.profiles.load import load_profile

    info = tmp_path / f"vllm-{installed}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {installed}\n\n")
    for name in ("flash", "pro"):
        assert doctor.check_vllm(load_profile(name), paths=[str(tmp_path)]).exit_code == code


def test_disk_warns_when_the_weights_do_not_fit(isolated_home, monkeypatch):
    import dataclasses
    import shutil

    from dsv4serve.profiles.load import load_profile

    flash = load_profile("flash")
    free = shutil.disk_usage(isolated_home).free
    big = dataclasses.replace(flash, model=dataclasses.replace(flash.model, weights_bytes=free * 2))
    small = dataclasses.replace(flash, model=dataclasses.replace(flash.model, weights_bytes=1024))
    assert doctor.check_disk(big).status == "warn"
    assert doctor.check_disk(small).status == "ok"


def test_doctor_is_fast_and_offline(dsv4serve_cmd):
    """Under 2 s as a fresh process, with the hub unreachable (a dead endpoint would hang a network call)."""
    env = {**os.environ, "HF_ENDPOINT": "http://10.255.255.1:9", "HF_HUB_OFFLINE": "0"}
    start = time.monotonic()
    proc = subprocess.run(
        [*dsv4serve_cmd, "doctor", "flash", "--port", str(_free_port()), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode in (0, 2, 3, 4, 5), proc.stderr
    assert json.loads(proc.stdout)["profile"] == "flash"
    assert elapsed < 2.0, f"doctor took {elapsed:.2f} s"


def test_unknown_profile_is_a_usage_error(run_cli):
    result = run_cli("doctor", "no-such-profile")
    assert result.exit_code == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
