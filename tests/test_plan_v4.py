"""The planner with DeepSeek-V4's structured KV cache: start-up need, lowering, capacity, and the profile
fields of issue 10 (model.kv_cache, serve.min_vllm_version / max_num_batched_tokens / deep_gemm_warmup)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dsv4serve.errors import ProfileError, UsageError
from dsv4serve.hardware.inventory import gib, parse_hardware
from dsv4serve.planning.memory import kv_layout
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile

M1 = 1_048_576
T = 16_384


def plan(name, hardware, profile=None, **overrides):
    return make_plan(profile or load_profile(name), parse_hardware(hardware).gpus, Overrides(**overrides))


def room(row):
    return row.budget - row.weights - row.overhead


def test_flash_2xh200_kv_column_is_the_startup_need_and_capacity_is_whole_blocks():
    p = plan("flash", "2xH200")
    lay = kv_layout(load_profile("flash"))
    assert p.fits and p.max_model_len == M1
    for row in p.memory:
        assert row.kv_cache == lay.startup_need(M1, T)
        blocks = room(row) // 1_039_680
        assert row.kv_capacity_tokens == blocks * 256
        assert row.kv_capacity_seqs == blocks // (4096 + 26)
    assert p.kv.layout == "deepseek_v4" and p.kv.block_stride == 1_039_680
    assert (p.kv.fixed_blocks_per_sequence, p.kv.in_flight_tokens) == (26, T)
    assert p.kv.startup_need == p.memory[0].kv_cache


def test_pro_8xh200_need_at_its_200k_context():
    p = plan("pro", "8xH200")
    assert p.fits and p.max_model_len == 200_000
    assert p.memory[0].kv_cache == kv_layout(load_profile("pro")).startup_need(200_000, T)
    assert round(p.kv.bytes_per_token) == 5_756


def _flash_on(gib_per_gpu):
    # the preview's weights with its MTP layer (the room the figures below were chosen for; --spec mtp
    # adds no KV on 0.26) and the same KV cache as 0731
    profile = dataclasses.replace(load_profile("flash-preview"), hardware=())  # let memory alone decide
    return plan("flash", f"2x{gib_per_gpu}GiB@9.0", profile=profile, spec="mtp")


def test_lowers_to_the_largest_block_multiple_whose_startup_need_fits():
    p = _flash_on(98)  # ~8.5 GiB left for KV per GPU: 1M needs 10.56
    lay = kv_layout(load_profile("flash"))
    left = room(p.memory[0])
    assert p.fits and p.max_model_len < M1 and p.max_model_len % 256 == 0
    assert lay.startup_need(p.max_model_len, T) <= left < lay.startup_need(p.max_model_len + 256, T)
    assert any("lowered from 1048576" in n and "start-up check" in n for n in p.notes)
    assert p.memory[0].kv_cache == lay.startup_need(p.max_model_len, T)


def test_refuses_when_the_minimum_context_needs_more():
    p = _flash_on(90)  # ~1.5 GiB for KV; 4,096 tokens need 1.64 GiB (the states of 16,384 tokens in flight)
    need = kv_layout(load_profile("flash")).startup_need(4096, T)
    assert not p.fits and room(p.memory[0]) < need
    assert any(f"KV cache for 4096 tokens needs {gib(need)}" in problem for problem in p.problems)


@pytest.mark.parametrize("extra", [("--max-num-batched-tokens", "2048"), ("--max-num-batched-tokens=2048",)])
def test_max_num_batched_tokens_from_the_args_sizes_the_check(extra):
    p = plan("flash", "2xH200", extra_args=extra)
    assert p.kv.in_flight_tokens == 4096
    assert p.memory[0].kv_cache == kv_layout(load_profile("flash")).startup_need(M1, 4096)
    assert p.memory[0].kv_cache < plan("flash", "2xH200").memory[0].kv_cache


def test_max_num_batched_tokens_from_the_profile_reaches_vllm(tmp_path):
    path = tmp_path / "big-batch.yaml"
    path.write_text("name: big-batch\nextends: flash\nserve:\n  max_num_batched_tokens: 32768\n")
    p = plan("", "2xH200", profile=load_profile(str(path)))
    assert p.kv.in_flight_tokens == 65_536
    assert p.args[p.args.index("--max-num-batched-tokens") + 1] == "32768"
    assert "--max-num-batched-tokens" not in plan("flash", "2xH200").args


@pytest.mark.parametrize("value", ["lots", "0", "²", "1" * 5000])  # '²'.isdigit(); int() refuses both
def test_bad_max_num_batched_tokens_in_args_is_a_usage_error(value):
    with pytest.raises(UsageError, match="--max-num-batched-tokens") as err:
        plan("flash", "2xH200", extra_args=("--max-num-batched-tokens", value))
    assert len(err.value.message) < 200  # the 5,000 digits are not echoed whole


def test_max_num_batched_tokens_after_a_second_dashdash_is_no_flag():
    p = plan("flash", "2xH200", extra_args=("--", "--max-num-batched-tokens", "²"))
    assert p.kv.in_flight_tokens == plan("flash", "2xH200").kv.in_flight_tokens


def test_per_token_profiles_are_unchanged():
    p = make_plan(load_profile("tiny"), parse_hardware("1xL40S").gpus, Overrides(model_location="/m"))
    assert p.memory[0].kv_cache == 2304 * p.max_model_len and p.kv.layout == "per_token"
    assert p.memory[0].kv_capacity_seqs == p.memory[0].kv_capacity_tokens // p.max_model_len


def test_plan_json_carries_the_kv_figures(run_cli):
    result = run_cli("plan", "flash", "--hardware", "2xH200", "--json", "--vllm-version", "0.26")
    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert data["kv"]["block_stride"] == 1_039_680 and data["kv"]["fixed_blocks_per_sequence"] == 26
    assert data["kv"]["startup_need"] == data["memory"][0]["kv_cache"]
    assert data["memory"][0]["kv_capacity_seqs"] > 0


def test_plan_text_shows_stride_startup_need_and_capacity(run_cli):
    result = run_cli("plan", "flash", "--hardware", "2xH200", "--vllm-version", "0.26")
    out = result.stdout
    assert result.exit_code == 0
    assert "1,039,680 B per 256-token block = 4,061 B/token" in out and "26 blocks" in out
    assert "max_model_len 1048576 with 16,384 tokens in flight (max_num_batched_tokens 8,192) needs " in out
    assert "needs 10.56 GiB per GPU\n" in out  # no null block before 0.29
    assert "sequences of 1,048,576 tokens at once" in out
    assert "10.6" in out.split("│ 0 ")[1].split("\n")[0]  # the table's KV cache column


def test_plan_text_of_0_29_and_later(run_cli):
    result = run_cli("plan", "flash", "--hardware", "2xH200", "--vllm-version", "0.29")
    out = result.stdout
    assert result.exit_code == 0
    assert "1,002,240 B per 256-token block = 3,915 B/token" in out
    assert "needs 10.06 GiB per GPU, the null block it holds back first (1,002,240 B) included" in out
    assert "10.1" in out.split("│ 0 ")[1].split("\n")[0]
    assert "note: modeled on vLLM 0.29 (--vllm-version 0.29): KV layout: packed groups (0.27+)" in out


# --- the profile fields ---------------------------------------------------------------------------


def test_kv_bytes_per_token_is_optional_with_kv_cache_only(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("name: bare\nextends: tiny\nmodel:\n  kv_bytes_per_token: null\n")
    with pytest.raises(ProfileError, match=r"bare.yaml:4: model.kv_bytes_per_token"):
        load_profile(str(path))
    assert load_profile("flash").model.kv_bytes_per_token == 4061  # derived from kv_cache: stride / 256


def _child(tmp_path, body):
    path = tmp_path / "child.yaml"
    path.write_text("name: child\nextends: flash\n" + body)
    return str(path)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            "model:\n  kv_cache:\n    compress_ratios: [0, 4, 5]\n",
            "child.yaml:5: model.kv_cache.compress_ratios[2]",
        ),
        (
            "model:\n  kv_cache:\n    compress_ratios: [0, 4, 128]\n",
            "child.yaml:5: model.kv_cache.compress_ratios",
        ),
        ("model:\n  layers: 2\n  kv_cache:\n    compress_ratios: [0, 1]\n", "child.yaml:6: model.kv_cache"),
        ("model:\n  kv_cache:\n    layout: deepseek_v3\n", "child.yaml:5: model.kv_cache.layout"),
        ("model:\n  kv_cache:\n    sliding_window: 0\n", "child.yaml:5: model.kv_cache.sliding_window"),
        ("model:\n  kv_cache:\n    head_dim: wide\n", "child.yaml:5: model.kv_cache.head_dim"),
        ('serve:\n  min_vllm_version: "newest"\n', "child.yaml:4: serve.min_vllm_version"),
        ("serve:\n  min_vllm_version: 0.20\n", "child.yaml:4: serve.min_vllm_version"),
        ("serve:\n  max_num_batched_tokens: 0\n", "child.yaml:4: serve.max_num_batched_tokens"),
        ("serve:\n  deep_gemm_warmup: fast\n", "child.yaml:4: serve.deep_gemm_warmup"),
    ],
)
def test_bad_fields_name_file_line_and_field(tmp_path, body, where):
    with pytest.raises(ProfileError) as err:
        load_profile(_child(tmp_path, body))
    assert where in err.value.message and err.value.hint


def test_ratio_count_must_match_layers(tmp_path):
    with pytest.raises(ProfileError, match="3 ratios for 43 layers"):
        load_profile(_child(tmp_path, "model:\n  kv_cache:\n    compress_ratios: [0, 4, 128]\n"))


@pytest.mark.parametrize("mode", ["full", "relax", "skip"])
def test_good_extras_load(tmp_path, mode):
    body = (
        f'serve:\n  deep_gemm_warmup: {mode}\n  min_vllm_version: "0.26.0"\n  max_num_batched_tokens: 4096\n'
    )
    serve = load_profile(_child(tmp_path, body)).serve
    assert (serve.deep_gemm_warmup, serve.min_vllm_version, serve.max_num_batched_tokens) == (
        mode,
        "0.26.0",
        4096,
    )
    assert (
        load_profile("flash-preview").serve.min_vllm_version
        == "0.20.0"
        == load_profile("pro-preview").serve.min_vllm_version
    )
    # the official releases carry a DSpark draft: vLLM 0.25 (the recipes)
    assert (
        load_profile("flash").serve.min_vllm_version == "0.25.0" == load_profile("pro").serve.min_vllm_version
    )
