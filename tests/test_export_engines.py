"""export for every engine (issue 21): each format x engine checked by the validators test_export.py
uses (the Compose spec schema, kubernetes-validate, systemd-analyze verify), GPUs requested exactly
when the plan puts work on them, memory from the plan's RAM row, and an exported `up` that plans the
same engine and quant."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_export import _compose_validator, _k8s_documents, dry_run_up
from tests.test_export import fixed_env as fixed_env  # noqa: F401 - the fixture, shared

MIB = 1024**2
# name: (export args after FORMAT, whether the plan uses GPUs, the GPU model for a declared --gpus N)
ENGINE_CASES = {
    "tiny-v4-llamacpp": (("tiny-v4", "--engine", "llama.cpp", "--ram", "16"), False, None),
    "tiny-v4-transformers": (("tiny-v4", "--engine", "transformers", "--ram", "16"), False, None),
    "tiny-vllm": (("tiny", "--engine", "vllm"), False, None),
    "flash-vllm-2xH200": (("flash", "--engine", "vllm", "--hardware", "2xH200"), True, "H200"),
    # GGUF with its attention on the GPU and the experts in RAM: both a GPU and a RAM request
    "flash-gguf-1xRTX4090": (
        ("flash-gguf", "--engine", "llama.cpp", "--hardware", "1xRTX4090", "--ram", "256"),
        True,
        "RTX4090",
    ),
}
CASES = sorted(ENGINE_CASES)


@pytest.fixture(autouse=True)
def no_llama_server_override(monkeypatch):
    monkeypatch.delenv("DSV4SERVE_LLAMA_SERVER", raising=False)


def export(run_cli, fmt: str, case: str, *more: str) -> str:
    result = run_cli("export", fmt, *ENGINE_CASES[case][0], *more)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


def planned(run_cli, case: str) -> dict:
    """`dsv4serve plan` of the same args (its --json): what the export must follow."""
    result = run_cli("plan", *ENGINE_CASES[case][0], "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def plan_uses_gpus(plan: dict) -> bool:
    if plan["device"] != "cuda" or not plan["gpus"]:
        return False
    if plan["engine"] == "llama.cpp":
        return plan["engine_plan"]["gpu_layers"] > 0
    return True


def ram_mib(plan: dict) -> int:
    return math.ceil(sum(r["total"] for r in plan["memory"] if r["device"] in ("ram", "cpu")) / MIB)


@pytest.mark.parametrize("case", CASES)
def test_the_table_matches_the_plans(run_cli, case):
    """The expected GPU use of each case is the plan's own (-ngl, the device), not only the table's."""
    plan = planned(run_cli, case)
    assert plan_uses_gpus(plan) is ENGINE_CASES[case][1]
    assert plan["engine"] == ENGINE_CASES[case][0][2]


@pytest.mark.parametrize("case", CASES)
def test_compose_per_engine(run_cli, fixed_env, case):
    doc = yaml.safe_load(export(run_cli, "compose", case))
    assert not [e.message for e in _compose_validator().iter_errors(doc)]
    plan = planned(run_cli, case)
    server = doc["services"][next(n for n in doc["services"] if n != "download")]
    resources = server.get("deploy", {}).get("resources", {})
    devices = resources.get("reservations", {}).get("devices", [])
    assert bool(devices) is ENGINE_CASES[case][1]
    if devices:
        assert devices[0]["count"] == len(plan["gpus"]) and devices[0]["driver"] == "nvidia"
    need = ram_mib(plan)
    if need:
        assert resources["reservations"]["memory"] == f"{need}m"
        assert int(resources["limits"]["memory"].rstrip("m")) > need
    else:  # a vLLM GPU plan has no RAM figure: nothing made up
        assert "limits" not in resources and "memory" not in resources.get("reservations", {})
    assert ("shm_size" in server) is (plan["engine"] == "vllm")
    argv = server["command"]
    assert argv[argv.index("--engine") + 1] == plan["engine"]
    assert "nvidia" not in json.dumps(doc) or ENGINE_CASES[case][1]


@pytest.mark.parametrize("case", CASES)
def test_kubernetes_per_engine(run_cli, fixed_env, case):
    import kubernetes_validate as kv

    version = kv.utils.latest_version()
    text = export(run_cli, "kubernetes", case)
    docs = _k8s_documents(text)
    for doc in docs:
        kv.validate(doc, version, strict=True)
    plan = planned(run_cli, case)
    pod = docs[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    resources = container.get("resources", {})
    gpus = resources.get("limits", {}).get("nvidia.com/gpu")
    assert (gpus is not None) is ENGINE_CASES[case][1]
    assert ("nvidia.com/gpu" in text) is ENGINE_CASES[case][1]
    if gpus is not None:
        assert gpus == len(plan["gpus"])
    need = ram_mib(plan)
    if need:
        assert resources["requests"]["memory"] == f"{need}Mi"
        assert int(resources["limits"]["memory"].removesuffix("Mi")) > need
    else:
        assert "requests" not in resources and "memory" not in resources.get("limits", {})
    shm = any(v["name"] == "dshm" for v in pod["volumes"])
    assert shm is (plan["engine"] == "vllm")
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["dsv4serve", "probe"]
    if plan["engine"] == "llama.cpp":  # llama-server answers to its alias (-a)
        alias = plan["argv"][plan["argv"].index("-a") + 1]
        assert probe[probe.index("--model") + 1] == alias
        assert "llama-server" in text and "outside /cache" in text  # where the image must hold it


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("case", CASES)
def test_systemd_per_engine(run_cli, fixed_env, tmp_path, case):
    real = str(Path(sys.executable).parent / "dsv4serve")  # verify checks that ExecStart is executable
    unit = tmp_path / "dsv4serve-test.service"
    result = run_cli("export", "systemd", *ENGINE_CASES[case][0], "--bin", real, "-o", str(unit))
    assert result.exit_code == 0, result.stderr
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    text = unit.read_text()
    plan = planned(run_cli, case)
    assert ("PrivateDevices=yes" in text) is (not ENGINE_CASES[case][1])  # CPU only: no /dev/nvidia*
    assert (" --gpus " in text) is ENGINE_CASES[case][1]
    need = ram_mib(plan)
    assert (f"MemoryLow={need}M\n" in text) is bool(need)
    assert f" up {ENGINE_CASES[case][0][0]} --engine {plan['engine']}" in text


@pytest.mark.parametrize("case", CASES)
def test_exported_up_plans_the_same(run_cli, fixed_env, case):
    """The container's `up` (and `download`), given to `up --dry-run` here, plans the export's engine,
    quant, GPUs and context."""
    plan = planned(run_cli, case)
    doc = yaml.safe_load(export(run_cli, "compose", case))
    argv = doc["services"][next(n for n in doc["services"] if n != "download")]["command"]
    again = dry_run_up(run_cli, argv[2:], ENGINE_CASES[case][2])
    assert again["fits"] is True and again["engine"] == plan["engine"]
    assert len(again["gpus"]) == len(plan["gpus"]) and again["max_model_len"] == plan["max_model_len"]
    if plan["engine"] == "llama.cpp":
        quant = plan["engine_plan"]["quant"]
        assert again["engine_plan"]["quant"] == quant
        assert again["engine_plan"]["gpu_layers"] == plan["engine_plan"]["gpu_layers"]
        if "download" in doc["services"]:  # only that quant's files
            download = doc["services"]["download"]["command"]
            assert download[-4:] == ["--engine", "llama.cpp", "--quant", quant]


def test_transformers_liveness_asks_for_the_path_up_serves_in_the_pod(run_cli, fixed_env, monkeypatch):
    """transformers serve answers only to the path it loaded: the probe names the pod's own (its cache
    at /cache), the path `up` plans there."""
    text = export(run_cli, "kubernetes", "tiny-v4-transformers")
    container = next(yaml.safe_load_all(text))["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]["exec"]["command"]
    model = probe[probe.index("--model") + 1]
    cache = next(e["value"] for e in container["env"] if e["name"] == "XDG_CACHE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", cache)  # as in the pod (dry-run writes nothing there)
    result = run_cli("up", "tiny-v4", "--engine", "transformers", "--ram", "16", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"] == model and model.startswith(cache + "/")


def test_systemd_pins_the_llama_server_found_here(run_cli, fixed_env, monkeypatch, tmp_path):
    """A unit's PATH is not the login shell's: the llama-server found at export is pinned; without one,
    the install steps say how to get it."""
    missing = export(run_cli, "systemd", "tiny-v4-llamacpp")
    assert "llama-server is not installed here: build it once" in missing
    assert "DSV4SERVE_LLAMA_SERVER=" not in missing.split("[Service]")[1]
    server = tmp_path / "bin" / "llama-server"
    server.parent.mkdir()
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(0o755)
    monkeypatch.setenv("PATH", f"{server.parent}{os.pathsep}{os.environ['PATH']}")
    found = export(run_cli, "systemd", "tiny-v4-llamacpp")
    assert f"Environment=DSV4SERVE_LLAMA_SERVER={server}\n" in found
    assert "not installed here" not in found
    vllm = export(run_cli, "systemd", "tiny-vllm")
    assert "DSV4SERVE_LLAMA_SERVER" not in vllm  # only llama.cpp's units name it


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("compose", "tiny-v4", "--engine", "nosuch"), 2, "not an engine"),
        (("compose", "tiny-v4", "--engine", "transformers", "--quant", "Q4_K_M"), 2, "--quant"),
        (("kubernetes", "tiny-v4", "--engine", "llama.cpp", "--cuda-graphs"), 2, "vLLM's"),
        (("systemd", "tiny-v4", "--engine", "llama.cpp", "--ram", "-1"), 2, "--ram"),
        (("compose", "flash-gguf", "--engine", "llama.cpp", "--quant", "NOPE", "--ram", "256"), 2, "NOPE"),
        (("compose", "flash", "--engine", "llama.cpp", "--ram", "4"), 3, "RAM"),
    ],
)
def test_engine_refusals_are_one_line_with_a_hint(run_cli, args, code, words):
    result = run_cli("export", *args)
    out = result.stdout + result.stderr
    assert result.exit_code == code, out
    assert words in out and "Traceback" not in out
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hint:" in result.stderr
