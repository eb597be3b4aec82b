"""The DeepSeek-V4 KV-cache model against shared/facts/deepseek-v4-kv-cache.md (vLLM 0.26, FlashMLA)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from dsv4serve.engines.vllm.kv_cache import approximate_gcd, in_flight_tokens, layer_specs, v4_layout
from dsv4serve.hardware.inventory import GiB, MiB, parse_hardware
from dsv4serve.planning.memory import kv_need_bytes
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile
from dsv4serve.profiles.types import KvCache

M1 = 1_048_576
K128 = 131_072
T = 2 * 8192  # the H200 API server's default tokens in flight


def layout(name):
    return v4_layout(load_profile(name).model.kv_cache)


def tiny():
    return v4_layout(KvCache("deepseek_v4", (0, 4, 128)))


def tiny_kv():
    return KvCache("deepseek_v4", (4, 128))


def test_profiles_carry_the_config_compress_ratios():
    flash = load_profile("flash").model.kv_cache.compress_ratios
    pro = load_profile("pro").model.kv_cache.compress_ratios
    assert flash[:2] == (0, 0) and all(r == (4 if i % 2 == 0 else 128) for i, r in enumerate(flash) if i >= 2)
    assert pro[:2] == (128, 128) and all(r == (4 if i % 2 == 0 else 128) for i, r in enumerate(pro) if i >= 2)
    assert Counter(flash) == {0: 2, 4: 21, 128: 20} and Counter(pro) == {4: 30, 128: 31}


def test_page_sizes_of_each_kv_object():
    pages = {s.name.split(".", 1)[1]: (s.block, s.page, s.window) for s in layer_specs(tiny_kv(), 256)}
    assert pages == {
        "swa": (64, 37_440, 128),  # round_up(64 x 584, 576)
        "c4": (256, 37_440, None),
        "c4_state": (4, 32_832, 8),
        "index": (256, 8_640, None),
        "index_state": (4, 8_640, 8),
        "c128": (256, 1_728, None),
        "c128_state": (8, 32_832, 128),
    }


@pytest.mark.parametrize(
    ("name", "stride", "tuples", "blocks", "per_token"),
    [
        ("flash", 1_039_680, 22, (256, 64, 64, 4, 8), 4_061),
        ("pro", 1_473_408, 31, (256, 64, 64, 8, 4), 5_756),
    ],
)
def test_stride_groups_and_layer_tuples(name, stride, tuples, blocks, per_token):
    lay = layout(name)
    assert lay.stride == stride and lay.layer_tuples == tuples
    assert tuple(g.block for g in lay.groups) == blocks
    assert round(lay.bytes_per_token) == per_token
    # facts: 22 x 37,440 + 21 x 8,640 + 20 x 1,728 (Flash): the widest group's count of each page size
    count = Counter(load_profile(name).model.kv_cache.compress_ratios)
    assert lay.stride == tuples * 37_440 + count[4] * 8_640 + count[128] * 1_728


def test_tiny_v4_stride_in_six_groups():
    lay = tiny()
    assert lay.stride == 47_808 and len(lay.groups) == 6 and lay.layer_tuples == 1


@pytest.mark.parametrize("name", ["flash", "pro"])
def test_26_fixed_blocks_per_decoding_sequence(name):
    lay = layout(name)
    assert lay.fixed_blocks_per_sequence == 26  # 3 per SWA sub-group, 3 for C4 states, 17 for C128 states
    assert lay.sequence_blocks(K128) == 512 + 26 and lay.sequence_blocks(M1) == 4096 + 26


@pytest.mark.parametrize(
    ("name", "seq_128k", "seq_1m", "fixed_mib"),
    [("flash", 0.52, 3.99, 25.8), ("pro", 0.74, 5.66, 36.5)],
)
def test_one_sequence_costs(name, seq_128k, seq_1m, fixed_mib):
    lay = layout(name)
    assert round(lay.sequence_blocks(K128) * lay.stride / GiB, 2) == seq_128k
    assert round(lay.sequence_blocks(M1) * lay.stride / GiB, 2) == seq_1m
    assert round(lay.fixed_blocks_per_sequence * lay.stride / MiB, 1) == fixed_mib


def test_prefill_chunk_holds_3354_blocks():
    assert layout("flash").sliding_blocks(M1, 8192) == 3_354 == layout("pro").sliding_blocks(M1, 8192)


@pytest.mark.parametrize(("name", "at_1m", "at_128k"), [("flash", 10.56, 7.05), ("pro", 14.88, 9.93)])
def test_startup_need(name, at_1m, at_128k):
    lay = layout(name)
    assert in_flight_tokens(None) == T
    assert round(lay.startup_need(M1, T) / GiB, 2) == at_1m
    assert round(lay.startup_need(K128, T) / GiB, 2) == at_128k
    # 10,778 pages at 1M: 4,096 full blocks + the sliding groups with T tokens in flight
    assert lay.startup_need(M1, T) == 10_778 * lay.layer_tuples * (37_440 + 8_640 + 1_728)


def test_startup_need_grows_with_length_and_tokens_in_flight():
    lay = layout("flash")
    needs = [lay.startup_need(n * 256, T) for n in range(1, 4097, 64)]
    assert needs == sorted(needs) and needs[0] < needs[-1]
    assert lay.startup_need(M1, 2 * 2048) < lay.startup_need(M1, T) < lay.startup_need(M1, 2 * 32768)


@pytest.mark.parametrize(
    ("name", "blocks", "tokens_m", "seqs_1m"), [("flash", 103_276, 26.4, 25), ("pro", 72_874, 18.7, 17)]
)
def test_capacity_of_a_100_gib_pool(name, blocks, tokens_m, seqs_1m):
    capacity = layout(name).capacity(100 * GiB, M1)
    assert capacity.blocks == blocks and round(capacity.tokens / 1e6, 1) == tokens_m
    assert capacity.max_len_sequences == blocks // (4096 + 26) == seqs_1m


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_replicated_on_every_tp_rank(tp):
    flash = load_profile("flash")
    assert kv_need_bytes(flash, M1, tp, None) == kv_need_bytes(flash, M1, 1, None)


def test_approximate_gcd_pads_least_and_prefers_the_larger_on_ties():
    assert approximate_gcd([21, 43, 21, 20], lower_bound=21) == 22  # Flash: 1+1+1+2 slots of padding
    assert approximate_gcd([30, 61, 30, 31], lower_bound=30) == 31  # Pro
    assert approximate_gcd([4, 4], lower_bound=2) == 4  # 2 and 4 both pad 0: the larger wins


def test_needs_a_compressed_layer():
    with pytest.raises(ValueError, match="compressed layer"):
        v4_layout(KvCache("deepseek_v4", (0, 0)))


# --- what vLLM 0.26 logs: "GPU KV cache size: S tokens", "Maximum concurrency for M tokens ...: X x" -----


@pytest.mark.parametrize(
    ("name", "concurrency", "tokens_m"), [("flash", "10.31", 10.8), ("pro", "7.20", 7.5)]
)
def test_vllm_reports_the_facts_figures_for_a_100_gib_pool_at_1m(name, concurrency, tokens_m):
    capacity = layout(name).capacity(100 * GiB, M1)
    report = capacity.vllm
    assert report.num_blocks == capacity.blocks
    assert f"{report.max_concurrency:.2f}" == concurrency  # vLLM prints "%.2fx"
    assert round(report.tokens / 1e6, 1) == tokens_m and report.tokens == int(report.max_concurrency * M1)
    # far below the full group's capacity (26.4M / 18.7M): every sliding group counts T tokens in flight
    assert report.tokens < capacity.tokens / 2


@pytest.mark.parametrize("name", ["flash", "pro"])
def test_only_two_batches_of_8192_in_flight_reproduce_the_facts(name):
    lay, want = layout(name), {"flash": "10.31", "pro": "7.20"}[name]
    blocks = 100 * GiB // lay.stride
    matching = [
        t for t in range(1024, 65537, 1024) if f"{lay.vllm_report(blocks, M1, t).max_concurrency:.2f}" == want
    ]
    assert matching == [T]


def test_a_request_counts_each_groups_blocks_weighted_by_its_page_sum():
    lay = layout("flash")
    full = sum(lay.groups[0].pages)
    weighted = sum(lay.group_blocks(g, M1, T) * sum(g.pages) for g in lay.groups)
    report = lay.vllm_report(103_276, M1, T)
    assert report.blocks_per_request == -(-weighted // full)
    # neither the start-up check's page count (10,778) nor the blocks a long sequence holds (4,122)
    startup_pages = M1 // 256 + lay.sliding_blocks(M1, T)
    assert report.blocks_per_request not in (startup_pages, lay.sequence_blocks(M1))


def test_tiny_v4_reproduces_the_logged_2_332_473_tokens():
    # recipes/vllm-gpu-v4: TP 2, utilization 0.3 of an H200, max_model_len 4096 -> "GPU KV cache size:
    # 2,332,473 tokens" (pool not recorded). At 4096 tokens the windows cover the whole length, so T does
    # not matter; a pool of whole blocks gives that figure, and a plausible one: under the 0.3 x 140 GiB
    # budget, above it less 5 GiB of weights and overhead.
    lay = tiny()
    per_request = lay.vllm_report(1, 4096, T).blocks_per_request
    assert all(lay.vllm_report(1, 4096, t).blocks_per_request == per_request for t in (4096, 8192, 65536))
    near = 2_332_473 * per_request // 4096
    hits = [n for n in range(near - 3, near + 4) if lay.vllm_report(n, 4096, T).tokens == 2_332_473]
    assert len(hits) == 1 and 37 * GiB < hits[0] * lay.stride < 42 * GiB


# --- the plan shows them, for its expected pool (budget - weights - overhead) --------------------------


def _pool(row):
    return row.budget - row.weights - row.overhead


@pytest.mark.parametrize(
    ("name", "hardware", "batched"), [("flash", "2xH200", None), ("pro", "8xH200", 2048)]
)
def test_plan_rows_carry_what_vllm_will_report(name, hardware, batched):
    extra = ("--max-num-batched-tokens", str(batched)) if batched else ()
    p = make_plan(load_profile(name), parse_hardware(hardware).gpus, Overrides(extra_args=extra))
    lay = layout(name)
    for row in p.memory:
        report = lay.vllm_report(_pool(row) // lay.stride, p.max_model_len, in_flight_tokens(batched))
        assert (row.vllm_kv_tokens, row.vllm_max_concurrency) == (report.tokens, report.max_concurrency)
        assert 0 < row.vllm_kv_tokens < row.kv_capacity_tokens


def test_fewer_tokens_in_flight_raise_the_reported_concurrency():
    def concurrency(*extra):
        p = make_plan(load_profile("flash"), parse_hardware("2xH200").gpus, Overrides(extra_args=extra))
        return p.memory[0].vllm_max_concurrency

    assert (
        concurrency("--max-num-batched-tokens", "2048")
        > concurrency()
        > concurrency("--max-num-batched-tokens", "32768")
    )


def test_per_token_plans_report_nothing_of_vllms():
    p = make_plan(load_profile("tiny"), parse_hardware("1xL40S").gpus, Overrides(model_location="/m"))
    assert (p.memory[0].vllm_kv_tokens, p.memory[0].vllm_max_concurrency) == (0, 0.0)


@pytest.mark.parametrize(
    ("version", "lines"),
    [
        (
            "0.26",
            ["GPU KV cache size: {t} tokens", "Maximum concurrency for 1,048,576 tokens per request: {c}x"],
        ),
        (
            "0.29",
            ["GPU KV cache size: {t} tokens, Maximum concurrency for 1,048,576 tokens per request: {c}x"],
        ),
        (
            "0.33",
            ["GPU KV cache size: {t} tokens, Maximum concurrency for 1,048,576 tokens per request: {c}x"],
        ),
    ],
)
def test_plan_text_and_json_show_vllms_figures(run_cli, version, lines):
    args = ("plan", "flash", "--hardware", "2xH200", "--vllm-version", version)
    data = json.loads(run_cli(*args, "--json").stdout)
    row = data["memory"][0]
    assert data["vllm_release"] == version
    out = run_cli(*args).stdout
    line = next(x for x in out.splitlines() if x.startswith("vLLM will report"))
    assert f"Available KV cache memory ~{_pool_gib(row)} GiB" in line
    tokens, concurrency = f"{row['vllm_kv_tokens']:,}", f"{row['vllm_max_concurrency']:.2f}"
    assert line.split(", then ")[1] == " / ".join(f"'{x.format(t=tokens, c=concurrency)}'" for x in lines)
    tiny_out = run_cli("plan", "tiny", "--hardware", "1xL40S").stdout
    assert "vLLM will report" not in tiny_out


def _pool_gib(row):
    return f"{(row['budget'] - row['weights'] - row['overhead']) / GiB:.2f}"
