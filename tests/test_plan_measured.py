"""The planner against what real GPUs showed (4x H200, vLLM 0.26.0, 2026-11-28; docs/validation.md).

Golden values from scripts/gpu_validate.py: NVML inventory, NVML used memory while `up tiny` served at
TP 1, 2 and 4, and the KV-cache figures vLLM logged. The plan must predict the per-GPU memory NVML shows
within 10%, the budget vLLM computes to the byte, and a KV capacity that vLLM's does not undercut.
"""

from __future__ import annotations

import pytest

from dsv4serve.hardware.inventory import Gpu
from dsv4serve.planning.memory import kv_cache_bytes_per_gpu
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile

GIB = 2**30
# `dsv4serve gpus --json` on the machine (matches nvidia-smi: 143771 MiB, cc 9.0, driver 580.159.04).
H200_TOTAL = 150_754_820_096
H200_RESERVED = 644_939_776
H200_FREE = 150_109_880_320
# vLLM: "Desired GPU memory utilization is (0.3, 41.94 GiB)".
VLLM_BUDGET_0_3 = 45_032_964_096
# tp: (NVML used during serving minus the idle baseline, vLLM "GPU KV cache size" tokens,
#      vLLM "Available KV cache memory" GiB)
MEASURED = {
    1: (46_361_608_192 - H200_RESERVED, 19_259_840, 41.33),
    2: (47_953_346_560 - H200_RESERVED, 19_403_120, 41.63),
    4: (47_997_452_288 - H200_RESERVED, 19_437_888, 41.71),
}


def h200(index: int) -> Gpu:
    return Gpu(
        index=index,
        name="NVIDIA H200",
        uuid=f"GPU-{index}",
        memory_total=H200_TOTAL,
        memory_free=H200_FREE,
        memory_used=H200_RESERVED,
        compute_capability="9.0",
        memory_reserved=H200_RESERVED,
    )


@pytest.fixture(scope="module")
def tiny():
    return load_profile("tiny")


@pytest.mark.parametrize("tp", sorted(MEASURED))
def test_budget_equals_vllms_own(tiny, tp):
    plan = make_plan(tiny, tuple(h200(i) for i in range(tp)), Overrides(model_location="/m"))
    assert plan.tensor_parallel_size == tp
    assert {row.budget for row in plan.memory} == {VLLM_BUDGET_0_3}


@pytest.mark.parametrize("tp", sorted(MEASURED))
def test_expected_used_within_10_percent_of_nvml(tiny, tp):
    measured = MEASURED[tp][0]
    plan = make_plan(tiny, tuple(h200(i) for i in range(tp)), Overrides(model_location="/m"))
    for row in plan.memory:
        assert abs(row.expected_used - measured) / measured < 0.10, (row.expected_used, measured)


@pytest.mark.parametrize("tp", sorted(MEASURED))
def test_kv_capacity_is_a_lower_bound_of_vllms(tiny, tp):
    _, tokens, _ = MEASURED[tp]
    plan = make_plan(tiny, tuple(h200(i) for i in range(tp)), Overrides(model_location="/m"))
    capacity = plan.memory[0].kv_capacity_tokens
    assert 0.8 * tokens <= capacity <= tokens


@pytest.mark.parametrize("tp", sorted(MEASURED))
def test_measured_kv_bytes_per_token_is_the_profiles_on_every_rank(tiny, tp):
    """vLLM's KV capacity per GPU did not grow with TP: the MLA cache is replicated, not split."""
    _, tokens, kv_gib = MEASURED[tp]
    per_token_measured = kv_gib * GIB / tokens
    assert abs(per_token_measured - tiny.model.kv_bytes_per_token) < 2  # 2,304 B/token, rounding of GiB
    assert kv_cache_bytes_per_gpu(tiny.model.kv_bytes_per_token, tokens, tp) == 2304 * tokens
