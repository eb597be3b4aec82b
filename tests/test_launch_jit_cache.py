"""jit_cache and its plan/up wiring: one persistent cache directory, the user's variables win, warmup."""

from __future__ import annotations

import json
import shlex
import stat

import pytest

from dsv4serve.engines.vllm import jit_cache
from dsv4serve.engines.vllm.argv import shell_line
from dsv4serve.errors import LaunchError, UsageError
from dsv4serve.hardware.inventory import parse_hardware
from dsv4serve.planning.plan import make_plan
from dsv4serve.planning.types import Overrides
from dsv4serve.profiles.load import load_profile

VARS = [var for var, _ in jit_cache.CACHE_VARS]


def test_the_cache_variables_are_the_ones_the_libraries_read():
    # Each name was checked in its library's source (module docstring); this pins the set.
    assert VARS == [
        "VLLM_CACHE_ROOT",
        "DG_JIT_CACHE_DIR",
        "TILELANG_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "CUTE_DSL_CACHE_DIR",
    ]
    assert jit_cache.WARMUP_CHOICES == ("relax", "full", "skip")  # vLLM 0.26.0 envs.py env_with_choices


def test_the_root_follows_xdg_cache_home(tmp_path):
    assert jit_cache.default_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "dsv4serve" / "jit"
    home = jit_cache.default_root({})
    assert home.parts[-3:] == (".cache", "dsv4serve", "jit")


def test_cache_env_puts_each_library_in_its_own_folder_and_leaves_the_users_alone(tmp_path):
    env = dict(jit_cache.cache_env(tmp_path, {"TRITON_CACHE_DIR": "/mine/triton", "DG_JIT_CACHE_DIR": ""}))
    assert "TRITON_CACHE_DIR" not in env  # the user's own setting wins
    assert env["DG_JIT_CACHE_DIR"] == str(tmp_path / "deep_gemm")  # an empty value counts as unset
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert len(set(env.values())) == len(env) == len(VARS) - 1


def test_ensure_dirs_creates_private_folders(tmp_path):
    env = jit_cache.cache_env(tmp_path / "jit", {})
    jit_cache.ensure_dirs(env)
    for _, path in env:
        mode = stat.S_IMODE((tmp_path / "jit" / path.rsplit("/", 1)[1]).stat().st_mode)
        assert mode == 0o700, (path, oct(mode))
    assert stat.S_IMODE((tmp_path / "jit").stat().st_mode) == 0o700
    jit_cache.ensure_dirs(env)  # again: nothing to do, no error


def test_ensure_dirs_names_the_folder_it_cannot_create(tmp_path):
    (tmp_path / "file").write_text("in the way")
    env = jit_cache.cache_env(tmp_path / "file", {})
    with pytest.raises(LaunchError, match=r"cannot create the JIT cache directory .*file/vllm") as err:
        jit_cache.ensure_dirs(env)
    assert "XDG_CACHE_HOME" in err.value.hint


@pytest.mark.parametrize(
    ("warmup", "serve_env", "uses", "expected"),
    [
        (None, {}, True, "relax"),  # the default
        ("skip", {}, True, "skip"),
        (None, {"VLLM_DEEP_GEMM_WARMUP": "full"}, True, "full"),  # the profile's serve.env
        ("skip", {"VLLM_DEEP_GEMM_WARMUP": "full"}, True, "skip"),  # an explicit choice beats it
        ("full", {}, False, "full"),  # asked for, on a profile without DeepGEMM
        (None, {}, False, None),  # not a DeepGEMM model, nothing asked: the env stays as it was
    ],
)
def test_startup_env_warmup_precedence(warmup, serve_env, uses, expected):
    env, notes = jit_cache.startup_env(serve_env, warmup, (("VLLM_CACHE_ROOT", "/c/vllm"),), uses)
    assert env.get("VLLM_DEEP_GEMM_WARMUP") == expected
    assert env["VLLM_CACHE_ROOT"] == "/c/vllm"
    assert notes[0].startswith(f"DeepGEMM warmup {expected} ") if expected else notes == ()


def test_the_profiles_env_wins_over_the_cache_default():
    env, _ = jit_cache.startup_env(
        {"TRITON_CACHE_DIR": "/p"}, None, (("TRITON_CACHE_DIR", "/c/triton"),), False
    )
    assert env == {"TRITON_CACHE_DIR": "/p"}


def test_a_bad_warmup_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match="'fast' is not a DeepGEMM warmup choice") as err:
        jit_cache.startup_env({}, "fast", (), True)
    assert "relax, full, skip" in err.value.hint


def v4_plan(**overrides):
    profile = load_profile("flash")
    assert profile.model.kv_cache is not None  # a V4 profile: DeepGEMM runs its FP8 GEMMs
    return make_plan(profile, parse_hardware("2xH200").gpus, Overrides(**overrides))


def test_the_plan_carries_the_caches_and_the_warmup_into_the_pasteable_line(tmp_path):
    cache = jit_cache.cache_env(tmp_path, {})
    plan = v4_plan(jit_cache_env=cache, deep_gemm_warmup="skip")
    env = dict(plan.env)
    assert env["VLLM_DEEP_GEMM_WARMUP"] == "skip"
    assert {k: env[k] for k, _ in cache} == dict(cache)
    assert any("first requests compile kernels" in n for n in plan.notes)
    words = shlex.split(shell_line(plan))
    assert f"TILELANG_CACHE_DIR={tmp_path / 'tilelang'}" in words[: words.index("vllm")]


def test_a_v4_plan_defaults_to_relax_and_says_why():
    plan = v4_plan()
    assert dict(plan.env)["VLLM_DEEP_GEMM_WARMUP"] == "relax"
    note = next(n for n in plan.notes if n.startswith("DeepGEMM warmup relax"))
    assert "--warmup relax|full|skip" in note and "JIT cache" in note


def test_plan_cli_warmup_option_user_env_and_cache_root(run_cli, monkeypatch, isolated_home):
    result = run_cli("plan", "flash", "--hardware", "2xH200", "--json", "--warmup", "full")
    assert result.exit_code == 0, result.stderr
    env = json.loads(result.stdout)["env"]
    root = isolated_home / ".cache" / "dsv4serve" / "jit"
    assert env["VLLM_DEEP_GEMM_WARMUP"] == "full"
    assert env["VLLM_CACHE_ROOT"] == str(root / "vllm") and env["CUTE_DSL_CACHE_DIR"] == str(
        root / "cute_dsl"
    )
    assert not root.exists()  # planning writes nothing

    monkeypatch.setenv("VLLM_DEEP_GEMM_WARMUP", "skip")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/my/triton")
    env = json.loads(run_cli("plan", "flash", "--hardware", "2xH200", "--json").stdout)["env"]
    assert env["VLLM_DEEP_GEMM_WARMUP"] == "skip" and "TRITON_CACHE_DIR" not in env

    monkeypatch.setenv("VLLM_DEEP_GEMM_WARMUP", "sometimes")
    bad = run_cli("plan", "flash", "--hardware", "2xH200")
    assert bad.exit_code == 2 and "VLLM_DEEP_GEMM_WARMUP: 'sometimes' is not a DeepGEMM warmup choice" in (
        bad.stderr + bad.stdout
    )
    bad = run_cli("plan", "flash", "--hardware", "2xH200", "--warmup", "eager")
    assert bad.exit_code == 2 and "--warmup: 'eager'" in bad.stderr + bad.stdout


def test_tiny_plans_keep_their_env_but_gain_the_caches(run_cli, isolated_home):
    result = run_cli("up", "tiny", "--dry-run")
    assert result.exit_code == 0, result.stderr
    root = isolated_home / ".cache" / "dsv4serve" / "jit"
    assert f"VLLM_CACHE_ROOT={root / 'vllm'}" in result.stdout
    assert "VLLM_DEEP_GEMM_WARMUP" not in result.stdout  # no DeepGEMM in the V3-shaped tiny model
    assert not root.exists()  # a dry run creates nothing
