"""The three engines behind one interface: names, argv, versions, refusals, and their planners
(llama.cpp's quant, offload and context; Transformers' bf16 fit), through the real CLI where it matters."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dsv4serve.engines.base import ENGINE_CHOICES, ENGINES, get_engine
from dsv4serve.engines.llamacpp.binary import parse_server_version
from dsv4serve.errors import EXIT_USAGE, DsvError, UsageError
from dsv4serve.hardware.inventory import GiB, parse_hardware
from dsv4serve.planning import llamacpp, llamacpp_kv, llamacpp_offload, llamacpp_quants
from dsv4serve.planning.types import Overrides
from dsv4serve.preflight.engine_choice import EngineOptions, plan_for_engine
from dsv4serve.profiles.load import load_profile


def test_every_engine_is_registered_and_gives_the_interface():
    for name in ENGINES:
        engine = get_engine(name)
        assert engine.name == name
        assert engine.command(("X",))[-1] == "X" and engine.program == engine.command(())
        assert engine.launch_argv(("X",))[-1] == "X"
        assert engine.log_reader().tracker.phase == "starting"
    assert get_engine("llamacpp").name == "llama.cpp" and get_engine("hf").name == "transformers"
    with pytest.raises(UsageError):
        get_engine("tgi")


def test_an_unknown_engine_is_exit_2_naming_the_choices(run_cli):
    result = run_cli("plan", "tiny-v4", "--engine", "tgi")
    assert result.exit_code == EXIT_USAGE
    assert all(name in result.stderr for name in ENGINE_CHOICES) and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "has_v4"),
    [
        ("version: 0.5.0-dev (build 0, commit unknown)\nbuilt with cc", True),  # the pinned source build
        ("version: 9840 (0123abc)\nbuilt with cc", True),  # the first build with deepseek4
        ("version: 9839 (0123abc)", False),
        ("version: 10438 (0123abc)", True),
    ],
)
def test_llama_server_version_against_the_v4_floor(text, has_v4):
    parsed = parse_server_version(text)
    assert parsed is not None and parsed[1] is has_v4
    engine = get_engine("llama.cpp")
    if has_v4:
        engine.require_version(None, parsed[0], "tiny-v4")
    else:
        with pytest.raises(UsageError, match="b9840"):
            engine.require_version(None, parsed[0], "tiny-v4")


def test_no_llama_server_is_exit_5_with_the_build_step():
    with pytest.raises(DsvError) as err:
        get_engine("llama.cpp").require_version(None, None, "flash")
    assert err.value.exit_code == 5 and "make llama-server" in err.value.hint


@pytest.mark.parametrize(
    ("engine", "args", "flag"),
    [
        ("llama.cpp", ("-c", "8192"), "-c"),
        ("llama.cpp", ("--n-gpu-layers=10",), "--n-gpu-layers"),
        ("llama.cpp", ("-ctk", "q8_0"), "-ctk"),
        ("llama.cpp", ("--api-key", "s3cret"), "--api-key"),
        ("transformers", ("--device", "cuda"), "--device"),
    ],
)
def test_flags_the_plan_decides_are_refused_after_the_dashes(run_cli, engine, args, flag):
    result = run_cli("plan", "tiny-v4", "--engine", engine, "--", *args)
    assert result.exit_code == EXIT_USAGE and flag in result.stderr and "s3cret" not in result.stderr


def test_other_flags_after_the_dashes_reach_llama_server_last(run_cli):
    result = run_cli("plan", "tiny-v4", "--engine", "llama.cpp", "--json", "--", "--temp", "0.6")
    assert json.loads(result.stdout)["argv"][-2:] == ["--temp", "0.6"]


# -- llama.cpp's planner --------------------------------------------------------------------------


def flash_plan(hardware: str | None, ram_gib: float, **kw):
    gpus = parse_hardware(hardware).gpus if hardware else ()
    profile = load_profile(kw.pop("profile", "flash"))
    requested = kw.pop("requested", profile.serve.max_model_len)
    return llamacpp.plan_llamacpp(
        profile,
        "m.gguf",
        gpus,
        Overrides(),
        requested,
        ram_total=int(ram_gib * GiB),
        ram_source="--ram",
        host_cpus=8,
        **kw,
    )


def test_the_kv_cache_grows_with_the_context_and_is_the_planned_column():
    kv = load_profile("flash").model.kv_cache
    sizes = [llamacpp_kv.kv_bytes(kv, n) for n in (4096, 65536, 1048576)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2]
    plan = flash_plan("1xH200", 512)
    assert plan.engine_plan.kv_bytes == llamacpp_kv.kv_bytes(kv, plan.engine_plan.context)


def test_the_largest_quant_that_fits_ram_plus_vram_is_chosen():
    big = flash_plan("1xRTX4090", 512)
    small = flash_plan("1xRTX4090", 96)
    sizes = {q.name: q.bytes for q in big.engine_plan.quants}
    assert big.fits and small.fits
    assert big.engine_plan.quant == max(sizes, key=sizes.get)
    fitting = [q for q in small.engine_plan.quants if q.fits]
    assert small.engine_plan.quant == max(fitting, key=lambda q: q.bytes).name
    assert sizes[small.engine_plan.quant] < sizes[big.engine_plan.quant]


def test_quant_forces_one_and_an_unknown_quant_is_a_usage_error():
    plan = flash_plan("1xRTX4090", 512, quant="UD-IQ1_M")
    assert plan.engine_plan.quant == "UD-IQ1_M" and plan.engine_plan.pattern == "*UD-IQ1_M*.gguf"
    with pytest.raises(UsageError) as err:
        flash_plan("1xRTX4090", 512, quant="Q9")
    assert "Q9" in err.value.message and "UD-Q4_K_XL" in err.value.hint


def test_a_big_gpu_holds_everything_a_small_one_keeps_experts_in_ram():
    whole = flash_plan("2xH200", 512, quant="UD-Q4_K_XL")
    part = flash_plan("1xRTX4090", 512, quant="UD-Q4_K_XL")
    layers = load_profile("flash").model.layers
    assert whole.engine_plan.gpu_layers == layers + 1 and whole.engine_plan.cpu_moe_layers == 0
    assert part.engine_plan.cpu_moe_layers > 0 and part.engine_plan.gpu_weights_bytes < 24 * GiB
    for p in (whole, part):
        args = p.args
        assert args[args.index("-ngl") + 1] == str(p.engine_plan.gpu_layers)
        assert all(row.total <= row.budget for row in p.memory)


def test_no_gpu_means_everything_in_ram():
    plan = flash_plan(None, 512, quant="UD-IQ1_M")
    assert plan.fits and plan.engine_plan.gpu_layers == 0 and "--n-cpu-moe" not in plan.args
    assert plan.memory[-1].total >= plan.engine_plan.weights_bytes


def test_the_context_is_lowered_to_the_longest_that_fits():
    # RAM enough for the weights, not for the whole 1M context's KV and buffers
    weights = [q.bytes for q in load_profile("flash").model.gguf.quants if q.name == "UD-IQ1_M"][0]
    room = (weights + 4 * GiB) / GiB / 0.9
    plan = flash_plan(None, room, quant="UD-IQ1_M")
    ctx = plan.engine_plan.context
    assert plan.fits and llamacpp_offload.MIN_CONTEXT <= ctx < 1048576 and ctx % 256 == 0
    assert plan.args[plan.args.index("-c") + 1] == str(ctx)
    assert any("context lowered from 1048576" in n for n in plan.notes)
    longer = flash_plan(None, room, quant="UD-IQ1_M", requested=ctx + 256)
    assert longer.engine_plan.context == ctx  # one block more does not fit


def test_too_little_memory_is_refused_naming_a_quant_that_fits():
    plan = flash_plan(None, 100, quant="UD-Q8_K_XL")
    assert not plan.fits and "RAM" in plan.verdict and "--quant UD-IQ" in plan.verdict


def test_cli_plan_flash_llama_cpp_on_a_4090_with_declared_ram(run_cli):
    result = run_cli("plan", "flash", "--engine", "llama.cpp", "--hardware", "1xRTX4090", "--ram", "256")
    assert result.exit_code == 0, result.stderr
    assert "with llama.cpp on 1x RTX4090 + RAM" in result.stdout and "declared with --ram" in result.stdout
    assert "llama-server -m" in result.stdout and "--n-cpu-moe" in result.stdout


@pytest.mark.parametrize("ram", ["0", "-4", "1e9"])
def test_a_bad_ram_is_a_usage_error(run_cli, ram):
    result = run_cli("plan", "flash", "--engine", "llama.cpp", "--ram", ram)
    assert result.exit_code == EXIT_USAGE and "--ram" in result.stderr


def test_thinking_maps_to_the_reasoning_flags(run_cli):
    on = json.loads(run_cli("plan", "tiny-v4", "--engine", "llama.cpp", "--thinking", "--json").stdout)
    off = json.loads(run_cli("plan", "tiny-v4", "--engine", "transformers", "--no-thinking", "--json").stdout)
    assert on["argv"][on["argv"].index("--reasoning") + 1] == "on"
    assert json.loads(off["argv"][off["argv"].index("--chat-template-kwargs") + 1]) == {"thinking": False}


def test_a_layer_cut_converts_instead_of_taking_the_full_models_gguf(tmp_path):
    path = tmp_path / "cut.yaml"
    path.write_text("name: cut\nextends: flash-preview\nmodel: {repo: null, path: /data/cut, layers: 43}\n")
    profile = load_profile(str(path))
    assert llamacpp_quants.hub_gguf(profile) is None
    assert llamacpp_quants.hub_gguf(load_profile("flash-preview"))


# -- Transformers' planner ------------------------------------------------------------------------


def test_transformers_fits_tiny_v4_and_refuses_flash_with_what_would_fit(run_cli):
    tiny = json.loads(run_cli("plan", "tiny-v4", "--engine", "transformers", "--json").stdout)
    assert tiny["engine"] == "transformers" and tiny["fits"] and tiny["argv"][:2] == ["transformers", "serve"]
    assert tiny["engine_plan"]["bf16_weights_bytes"] == load_profile("tiny-v4").model.total_params * 2
    flash = run_cli("plan", "flash", "--engine", "transformers", "--ram", "256")
    assert flash.exit_code == 3 and "bf16" in flash.stderr and "layer cut of" in flash.stderr


def test_transformers_refuses_an_api_key(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DSV4SERVE_API_KEY", "k3y-value")
    from dsv4serve.service.keys import with_key
    from dsv4serve.serving.spec import LaunchSpec

    spec = LaunchSpec(
        argv=("x",),
        host="127.0.0.1",
        port=1,
        served_model_name="m",
        startup_timeout_s=1,
        engine="transformers",
    )
    with pytest.raises(UsageError) as err:
        with_key(spec, "k3y-value")
    assert "k3y-value" not in err.value.message + err.value.hint
    llama = dataclasses.replace(spec, engine="llama.cpp")
    assert with_key(llama, "k3y-value").env == {"LLAMA_API_KEY": "k3y-value"}


# -- auto -----------------------------------------------------------------------------------------


def test_auto_keeps_vllm_where_it_runs_and_takes_llama_cpp_elsewhere():
    assert plan_for_engine("flash", EngineOptions(), hardware="2xH200")[1].engine == "vllm"
    assert plan_for_engine("tiny", EngineOptions())[1].engine == "vllm"  # vLLM's CPU build runs it
    assert plan_for_engine("flash", EngineOptions(), hardware="2xRTX4090")[1].engine == "llama.cpp"
    assert plan_for_engine("tiny-v4", EngineOptions(), device="cpu")[1].engine == "llama.cpp"


def test_the_profiles_serve_engine_is_the_default(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nextends: tiny-v4\nserve: {engine: transformers}\n")
    assert plan_for_engine(str(path), EngineOptions(), device="cpu")[1].engine == "transformers"
    assert (
        plan_for_engine(str(path), EngineOptions(engine="llama.cpp"), device="cpu")[1].engine == "llama.cpp"
    )


@pytest.mark.parametrize(
    ("yaml", "field"),
    [
        ("serve: {engine: tgi}", "serve.engine"),
        (
            "model: {gguf: {repo: a/b, quants: [{name: Q4, pattern: '*.bin'}]}}",
            "model.gguf.quants[0].pattern",
        ),
        ("model: {gguf: {repo: a/b, quants: []}}", "model.gguf.quants"),
        (
            "model: {gguf: {repo: a/b, quant: Q9, quants: [{name: Q4, pattern: '*Q4*.gguf'}]}}",
            "model.gguf.quant",
        ),
    ],
)
def test_bad_engine_fields_name_the_file_line_and_field(tmp_path, run_cli, yaml, field):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nextends: flash\n{yaml}\n")
    result = run_cli("profiles", "validate", str(path))
    assert result.exit_code == EXIT_USAGE and field in result.stdout + result.stderr


def test_doctor_checks_a_gguf_profiles_llama_server(run_cli, monkeypatch, tmp_path):
    """No llama-server: the engine row fails with up's exit 5 and the build step; no GPU is not a fail."""
    monkeypatch.setenv("DSV4SERVE_LLAMA_SERVER", str(tmp_path / "missing"))
    result = run_cli("doctor", "flash-gguf", "--json")
    data = json.loads(result.stdout)
    rows = {c["name"]: c for c in data["checks"]}
    assert result.exit_code == 5 and rows["llama.cpp"]["status"] == "fail"
    assert "make llama-server" in rows["llama.cpp"]["hint"]
    assert rows["driver"]["status"] != "fail"
