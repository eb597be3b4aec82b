"""The planner: golden argv over a table of inventories, the memory model, and the `plan` command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4serve.engines.vllm.argv import shell_line
from dsv4serve.errors import HardwareError, UsageError
from dsv4serve.hardware.inventory import GiB, GpuProcess, MiB, parse_hardware
from dsv4serve.planning.memory import (
    ACTIVATION_BYTES,
    CUDA_GRAPH_BYTES,
    kv_cache_bytes_per_gpu,
    overhead_bytes,
)
from dsv4serve.planning.plan import Overrides, make_plan, plan_to_dict
from dsv4serve.profiles.load import load_profile
from dsv4serve.profiles.types import HardwareRule, Model, Profile, Serve

GOLDEN = Path(__file__).parent / "golden"
HARDWARE = (
    "2xH200",
    "3xH200",
    "8xH200",
    "4xH100-80GB",
    "8xH100-80GB",
    "4xB200",
    "1xRTX4090",
    "2xA100-80GB",
    "8xL40S",
)
TINY_PATH = "/models/tiny"


def plan_for(name: str, hardware: str, **overrides):
    profile = load_profile(name)
    if profile.model.generate:
        overrides.setdefault("model_location", TINY_PATH)
    inventory = parse_hardware(hardware)
    return make_plan(profile, inventory.gpus, Overrides(**overrides), host_cpus=2, nodes=inventory.nodes)


def golden_text(plan) -> str:
    lines = [
        f"fits: {str(plan.fits).lower()}",
        f"device: {plan.device}",
        f"tensor_parallel_size: {plan.tensor_parallel_size}",
        f"max_model_len: {plan.max_model_len}",
        *(f"env: {k}={v}" for k, v in plan.env),
        *(f"problem: {p}" for p in plan.problems),
        "argv:",
        *(f"  {a}" for a in plan.args),
    ]
    return "\n".join(lines) + "\n"


CASES = [(p, h) for p in ("pro", "pro-preview", "flash", "flash-preview", "tiny") for h in HARDWARE]
CASES += [("tiny", "cpu")]


@pytest.mark.parametrize(("profile", "hardware"), CASES)
def test_golden_argv(profile, hardware):
    """Regenerate with UPDATE_GOLDEN=1 and review the diff."""
    text = golden_text(plan_for(profile, hardware))
    path = GOLDEN / f"{profile}-{hardware}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.read_text() == text


@pytest.mark.parametrize(("profile", "fits"), [("pro", False), ("flash", True), ("tiny", True)])
def test_fit_verdicts_on_4xH100(profile, fits):
    assert plan_for(profile, "4xH100-80GB").fits is fits


def test_flash_2xh200_fits_tp2_eager():
    plan = plan_for("flash", "2xH200")
    assert plan.fits and plan.tensor_parallel_size == 2 and not plan.problems
    assert "--enforce-eager" in plan.args
    assert plan.args[0] == "deepseek-ai/DeepSeek-V4-Flash-0731"
    assert dict(plan.env)["CUDA_VISIBLE_DEVICES"] == "0,1"
    # per GPU: half the weights, vLLM's start-up KV need (replicated, facts: 10.56 GiB), the eager overhead
    row = plan.memory[0]
    profile = load_profile("flash")
    assert row.weights == -(-profile.model.weights_bytes // 2)
    assert round(row.kv_cache / GiB, 2) == 10.56 and plan.max_model_len == 1048576
    # DeepSeek-V4 with its hidden size: activations of the profiling run at 8,192 batched tokens, vLLM's
    # buffers beyond the weights, the fixed non-torch figure at TP > 1, vLLM's 150 MiB reserve
    assert row.overhead == 105 * 4096 * 8192 + 800 * MiB + 1 * GiB + 150 * MiB
    assert row.total == row.weights + row.kv_cache + row.overhead <= row.budget
    assert row.budget == math.ceil(0.9 * (143771 - 615) * 2**20)  # vLLM: ceil(util x CUDA's total)


def test_flash_3xh200_never_uses_tp3():
    plan = plan_for("flash", "3xH200")
    assert plan.tensor_parallel_size == 2 and len(plan.gpus) == 2
    assert plan.args[plan.args.index("--tensor-parallel-size") + 1] != "3"


def test_tp_is_a_divisor_of_heads_without_rules():
    profile = dataclasses.replace(load_profile("flash"), hardware=())
    for count in range(1, 9):
        plan = make_plan(profile, parse_hardware(f"{count}xB200").gpus)
        assert 64 % plan.tensor_parallel_size == 0 and plan.tensor_parallel_size <= count
        assert plan.tensor_parallel_size == max(t for t in range(1, count + 1) if 64 % t == 0)


def test_pro_on_8xh100_names_what_would_fit():
    plan = plan_for("pro", "8xH100-80GB")
    assert not plan.fits
    assert "needs more memory" in plan.verdict
    assert "8xH200" in plan.suggestions and "2x8xH100-80GB" in plan.suggestions  # two nodes of 8
    assert all(not s.startswith(("8xH100", "8xL40S")) for s in plan.suggestions)


def test_rtx4090_reasons_memory_and_compute_capability():
    plan = plan_for("flash", "1xRTX4090")
    text = "\n".join(plan.problems)
    assert not plan.fits
    assert "compute capability 8.9, below the 9.0" in text
    assert "weights alone need" in text


def _small_profile(max_model_len=65536, block_size=256, rules=()):
    """A profile without hardware rules: 10 GiB of weights, 1 MiB of KV cache per token."""
    return Profile(
        name="small",
        description="test",
        model=Model(
            repo="org/small",
            attention_heads=16,
            weights_bytes=10 * GiB,
            kv_bytes_per_token=2**20,
            max_context=131072,
            min_compute_capability="8.0",
        ),
        serve=Serve(
            served_model_name="small",
            max_model_len=max_model_len,
            block_size=block_size,
            gpu_memory_utilization=0.5,
        ),
        hardware=rules,
    )


def test_max_model_len_lowered_to_a_block_multiple_that_fits():
    # 1x 48 GiB at 0.5 -> 24 GiB budget; 10 GiB weights + overhead leaves room for < 64K tokens at 1 MiB each
    profile = _small_profile()
    plan = make_plan(profile, parse_hardware("1x48GiB@9.0").gpus)
    room = 24 * GiB - 10 * GiB - overhead_bytes(False)
    expected = room // 2**20 // 256 * 256
    assert plan.fits and plan.max_model_len == expected < 65536
    assert any(f"lowered from 65536 to {expected}" in note for note in plan.notes)
    assert plan.memory[0].total <= plan.memory[0].budget
    assert plan.args[plan.args.index("--max-model-len") + 1] == str(expected)


def test_refuses_when_even_the_minimum_context_does_not_fit():
    plan = make_plan(_small_profile(), parse_hardware("1x32GiB@9.0").gpus)  # 16 GiB budget
    assert not plan.fits
    assert any("KV cache for 4096 tokens" in p for p in plan.problems)


def test_cuda_graphs_add_overhead_and_drop_enforce_eager():
    plan = plan_for("flash", "2xH200", cuda_graphs=True)
    assert "--enforce-eager" not in plan.args and plan.cuda_graphs
    eager = plan_for("flash", "2xH200").memory[0].overhead
    assert plan.memory[0].overhead == eager + CUDA_GRAPH_BYTES


def test_a_model_without_its_hidden_size_keeps_the_fixed_overhead():
    profile = load_profile("flash")
    fixed = dataclasses.replace(profile, model=dataclasses.replace(profile.model, hidden_size=0))
    plan = make_plan(fixed, parse_hardware("2xH200").gpus, Overrides())
    assert plan.memory[0].overhead == overhead_bytes(False) == ACTIVATION_BYTES + (1 * GiB + 150 * MiB)
    assert any(n.startswith("overhead column = fixed figures") for n in plan.notes)


def test_the_activation_follows_hidden_size_and_batched_tokens():
    def overhead(name, hardware, **kw):
        return plan_for(name, hardware, **kw).memory[0].overhead

    # Pro's hidden 7168 against Flash's 4096, at the same TP and step
    assert overhead("pro", "8xH200") - overhead("flash", "8xH200") == 105 * (7168 - 4096) * 8192
    # twice the scheduler's step, twice the activations (vLLM 0.28+ doubles its default on >= 160 GiB)
    step = overhead("flash", "2xH200", extra_args=("--max-num-batched-tokens", "16384"))
    assert step - overhead("flash", "2xH200") == 105 * 4096 * 8192


def test_kv_cache_is_not_split_across_tp_ranks():
    assert kv_cache_bytes_per_gpu(3440, 1000, 8) == kv_cache_bytes_per_gpu(3440, 1000, 1) == 3440000


def test_busy_gpu_lowers_utilization_and_says_why():
    gpus = parse_hardware("2xH200").gpus
    held = 40 * GiB
    busy = dataclasses.replace(
        gpus[1],
        memory_free=gpus[1].memory_total - held,
        memory_used=held,
        processes=(GpuProcess(4242, "python", held),),
    )
    plan = make_plan(load_profile("flash"), (gpus[0], busy))
    util = plan.gpu_memory_utilization
    assert util < 0.9
    assert all(row.budget <= row.free for row in plan.memory)  # vLLM's start check passes
    assert plan.args[plan.args.index("--gpu-memory-utilization") + 1] == f"{util:g}"
    assert any("pid 4242 python" in note and "lowered from 0.9" in note for note in plan.notes)


def test_model_location_revision_host_port_and_extra_args():
    plan = plan_for("pro", "8xH200", host="0.0.0.0", port=9001, extra_args=("--seed", "7"))
    assert plan.args[plan.args.index("--revision") + 1] == "main"
    assert plan.args[-4:] == ("--max-num-seqs", "16", "--seed", "7")  # profile's extras, then the user's
    assert plan.args[plan.args.index("--host") :][:2] == ("--host", "0.0.0.0")
    local = plan_for("pro", "8xH200", model_location="/snapshots/abc")
    assert local.args[0] == "/snapshots/abc" and "--revision" not in local.args


def test_trust_remote_code_only_where_the_profile_says():
    assert "--trust-remote-code" in plan_for("flash", "2xH200").args
    assert "--trust-remote-code" not in plan_for("tiny", "1xL40S").args


def test_cpu_path_for_tiny_and_tp2_binding():
    plan = plan_for("tiny", "cpu")
    assert plan.device == "cpu" and plan.fits and not plan.gpus
    assert dict(plan.env) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert "--gpu-memory-utilization" not in plan.args and "--enforce-eager" in plan.args
    tp2 = plan_for("tiny", "cpu", tensor_parallel_size=2)
    assert dict(tp2.env)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert tp2.args[tp2.args.index("--tensor-parallel-size") + 1] == "2"


@pytest.mark.parametrize("name", ["pro", "flash"])
def test_gpu_profiles_refuse_the_cpu(name):
    with pytest.raises(HardwareError, match="needs NVIDIA GPUs"):
        plan_for(name, "cpu")


def test_max_model_len_above_the_model_context_is_a_usage_error():
    with pytest.raises(UsageError, match="above the model's context"):
        plan_for("flash", "2xH200", max_model_len=2_000_000)


def test_hardware_rules_choose_the_tp_and_otherwise_only_note():
    profile = _small_profile(
        rules=(
            HardwareRule(gpus=4, min_vram_gib=70, tensor_parallel_size=4),
            HardwareRule(gpus=2, min_vram_gib=70, tensor_parallel_size=2),
        )
    )
    assert make_plan(profile, parse_hardware("8xH100-80GB").gpus).tensor_parallel_size == 4
    assert make_plan(profile, parse_hardware("3xH100-80GB").gpus).tensor_parallel_size == 2
    plan = make_plan(profile, parse_hardware("8x48GiB@9.0").gpus)  # too small for the rules, fits anyway
    assert plan.fits and plan.tensor_parallel_size == 8
    assert any("layouts matches" in note for note in plan.notes)


def test_suggestions_are_plannable():
    for name in ("pro", "flash"):
        for layout in plan_for(name, "1xRTX4090").suggestions:
            assert plan_for(name, layout).fits, (name, layout)


def test_plan_to_dict_is_json_with_the_contract_keys():
    data = json.loads(json.dumps(plan_to_dict(plan_for("flash", "2xH200"))))
    for key in (
        "fits",
        "tensor_parallel_size",
        "max_model_len",
        "gpus",
        "memory",
        "argv",
        "env",
        "problems",
        "notes",
        "device",
    ):
        assert key in data
    assert set(data["memory"][0]) >= {"weights", "kv_cache", "overhead", "total", "budget"}
    assert data["argv"][:3] == ["vllm", "serve", "deepseek-ai/DeepSeek-V4-Flash-0731"]


def test_shell_line_round_trips():
    plan = plan_for("flash", "2xH200", extra_args=("--chat-template", "a b"))
    words = shlex.split(shell_line(plan))
    assert words[:2] == ["CUDA_VISIBLE_DEVICES=0,1", "VLLM_DEEP_GEMM_WARMUP=relax"]
    assert words[2:] == ["vllm", "serve", *plan.args]


# --- the command ---------------------------------------------------------------------------------


def test_cli_plan_flash_2xh200(run_cli):
    result = run_cli("plan", "flash", "--hardware", "2xH200")
    assert result.exit_code == 0, result.stderr
    assert "--tensor-parallel-size 2" in result.stdout and "--enforce-eager" in result.stdout
    assert "verdict: fits" in result.stdout


def test_cli_plan_json(run_cli):
    result = run_cli("plan", "flash", "--hardware", "2xH200", "--json", "--", "--max-num-seqs", "4")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["fits"] and data["tensor_parallel_size"] == 2
    assert data["argv"][-2:] == ["--max-num-seqs", "4"]


def test_cli_plan_pro_8xh100_exits_3_after_printing(run_cli):
    result = run_cli("plan", "pro", "--hardware", "8xH100-80GB")
    assert result.exit_code == 3
    assert "DOES NOT FIT" in result.stdout  # the table and argv come first
    assert "needs more memory" in result.stderr and "8xH200" in result.stderr
    assert "2x8xH100-80GB" in result.stderr


def test_cli_plan_pro_8xh100_json_still_printed(run_cli):
    result = run_cli("plan", "pro", "--hardware", "8xH100-80GB", "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["fits"] is False


def test_cli_plan_flash_3xh200(run_cli):
    result = run_cli("plan", "flash", "--hardware", "3xH200", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["tensor_parallel_size"] == 2


def test_cli_plan_flash_rtx4090_exits_3_with_reasons(run_cli):
    result = run_cli("plan", "flash", "--hardware", "1xRTX4090", "--engine", "vllm")
    assert result.exit_code == 3
    assert "compute capability 8.9" in result.stdout and "weights alone" in result.stdout


def test_cli_plan_flash_rtx4090_auto_is_llama_cpp(run_cli):
    """vLLM cannot run V4 below compute capability 9.0: auto plans llama.cpp with experts in RAM."""
    result = run_cli("plan", "flash", "--hardware", "1xRTX4090", "--ram", "256", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert data["engine"] == "llama.cpp" and data["argv"][0] == "llama-server"
    assert any("engine auto: vLLM cannot run flash" in n for n in data["notes"])


def test_cli_unknown_gpu_is_a_usage_error(run_cli):
    result = run_cli("plan", "flash", "--hardware", "2xH300")
    assert result.exit_code == 2 and "H200" in result.stderr and "H100-80GB" in result.stderr


def test_cli_plan_flash_without_gpu_or_hardware(run_cli):
    result = run_cli("plan", "flash", "--engine", "vllm")  # this machine has no NVIDIA driver
    assert result.exit_code == 3 and "--hardware" in result.stderr and "Traceback" not in result.stderr


def test_cli_plan_tiny_takes_the_cpu_path(run_cli):
    result = run_cli("plan", "tiny", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["device"] == "cpu"
    assert data["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_cli_gpus_gives_exit_3_here(run_cli):
    pytest.importorskip("pynvml")
    result = run_cli("gpus", "--json")
    if result.exit_code == 0:  # on a GPU machine
        assert json.loads(result.stdout)["source"] == "nvml"
    else:
        assert result.exit_code == 3 and "--hardware" in result.stdout  # --json: the error is JSON too


def test_help_does_not_import_pynvml_or_rich():
    code = (
        "import sys; from dsv4serve.cli import main\ntry: main(['plan','--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('pynvml','rich','dsv4serve.planning.plan','yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pynvml" not in out.splitlines()[-1] and "dsv4serve.planning.plan" not in out.splitlines()[-1]


def test_the_plan_shows_the_measured_price_of_eager_for_v4_only(run_cli):
    v4 = run_cli("plan", "flash", "--hardware", "2xH200").stdout
    line = next(x for x in v4.splitlines() if x.startswith("eager or graphs (--cuda-graphs): "))
    assert "~5.1x" in line and "vLLM 0.26" in line and "--enforce-eager" in plan_for("flash", "2xH200").args
    graphs = run_cli("plan", "flash", "--hardware", "2xH200", "--cuda-graphs").stdout
    assert "eager or graphs (eager is the default): " in graphs
    assert "eager or graphs" not in run_cli("plan", "tiny", "--hardware", "1xH200").stdout
