"""export: golden outputs, checked by real validators (Compose spec schema, Kubernetes schemas,
systemd-analyze), and the exported `up` command accepted by `up` itself."""

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

GOLDEN = Path(__file__).parent / "golden"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
BIN = "/usr/local/bin/dsv4serve"

CASES = {
    "systemd-flash-2xH200": ("systemd", "flash", "--hardware", "2xH200", "--bin", BIN),
    "systemd-pro-2x8xH100-node1": (
        "systemd",
        "pro",
        "--hardware",
        "2x8xH100-80GB",
        "--node-rank",
        "1",
        "--master-addr",
        "10.0.0.1",
        "--bin",
        BIN,
    ),
    "compose-flash-2xH200": ("compose", "flash", "--hardware", "2xH200", "--port", "8100"),
    "compose-flash-gpus-0-1": ("compose", "flash", "--hardware", "2xH200", "--gpus", "0,1"),
    "compose-tiny": ("compose", "tiny", "--max-model-len", "2048"),
    "kubernetes-flash-2xH200": (
        "kubernetes",
        "flash",
        "--hardware",
        "2xH200",
        "--image",
        "reg.example/dsv4:1",
    ),
    "kubernetes-pro-2x8xH100": ("kubernetes", "pro", "--hardware", "2x8xH100-80GB"),
    # the other engines (test_export_engines.py checks every format x engine)
    "compose-tiny-v4-llamacpp": ("compose", "tiny-v4", "--engine", "llama.cpp", "--ram", "16"),
    "kubernetes-tiny-v4-transformers": ("kubernetes", "tiny-v4", "--engine", "transformers", "--ram", "16"),
    "kubernetes-flash-gguf-1xRTX4090": (
        "kubernetes",
        "flash-gguf",
        "--hardware",
        "1xRTX4090",
        "--ram",
        "256",
    ),
}


@pytest.fixture
def fixed_env(monkeypatch):
    """The paths and user a systemd unit pins, fixed so the golden files are the same on every machine."""
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/dsv4serve-test")
    monkeypatch.setenv("HF_HOME", "/var/cache/dsv4serve-test/huggingface")
    for var in ("LOGNAME", "USER"):
        monkeypatch.setenv(var, "dsv4")
    for var in ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "DG_JIT_CACHE_DIR", "VLLM_DEEP_GEMM_WARMUP"):
        monkeypatch.delenv(var, raising=False)


def export(run_cli, *args: str) -> str:
    result = run_cli("export", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(run_cli, fixed_env, case):
    """Regenerate with UPDATE_GOLDEN=1 and review the diff."""
    fmt = CASES[case][0]
    text = export(run_cli, *CASES[case])
    path = GOLDEN / f"export-{case}.{'service' if fmt == 'systemd' else 'yaml'}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def _compose_validator():
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("compose")))
def test_compose_matches_the_compose_spec_schema(run_cli, fixed_env, case):
    validator = _compose_validator()
    doc = yaml.safe_load(export(run_cli, *CASES[case]))
    errors = [e.message for e in validator.iter_errors(doc)]
    assert not errors
    # The validator is not blind: a wrong type and an unknown key are caught.
    broken = json.loads(json.dumps(doc))
    server = broken["services"][next(n for n in broken["services"] if n != "download")]
    server["healthcheck"]["test"] = {"cmd": "curl"}
    server["gpus_please"] = True
    assert len(list(validator.iter_errors(broken))) >= 2


def _k8s_documents(text: str) -> list[dict]:
    """Each manifest, and a LeaderWorkerSet's pod templates as core PodTemplates (it is a CRD)."""
    docs = []
    for doc in yaml.safe_load_all(text):
        if doc["kind"] == "LeaderWorkerSet":
            lwt = doc["spec"]["leaderWorkerTemplate"]
            assert lwt["size"] >= 2
            for key in ("leaderTemplate", "workerTemplate"):
                meta = {"name": f"{doc['metadata']['name']}-{key.lower()}"}
                docs.append(
                    {"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta, "template": lwt[key]}
                )
        else:
            docs.append(doc)
    return docs


@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("kubernetes")))
def test_kubernetes_manifests_match_the_kubernetes_schemas(run_cli, fixed_env, case):
    import kubernetes_validate as kv

    version = kv.utils.latest_version()
    docs = _k8s_documents(export(run_cli, *CASES[case]))
    for doc in docs:
        kv.validate(doc, version, strict=True)
    broken = json.loads(json.dumps(docs[0]))
    pod = broken["spec"]["template"]["spec"] if "spec" in broken else broken["template"]["spec"]
    pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = ["eight"]
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, version, strict=True)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("systemd")))
def test_systemd_unit_passes_systemd_analyze_verify(run_cli, fixed_env, tmp_path, case):
    real = str(Path(sys.executable).parent / "dsv4serve")  # verify checks that ExecStart is executable
    args = [a if a != BIN else real for a in CASES[case]]
    unit = tmp_path / "dsv4serve-test.service"
    run_cli("export", *args, "-o", str(unit))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    # ...and it does complain about a broken key (it exits 0 on those: the stderr is the verdict).
    unit.write_text(unit.read_text().replace("KillMode=control-group", "KillMode=bogus"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "kill mode" in proc.stderr


def test_sizes_follow_the_plan(run_cli, fixed_env):
    from dsv4serve.profiles.load import load_profile
    from dsv4serve.serving.ready import startup_timeout

    flash = load_profile("flash")
    need = startup_timeout(flash.serve.startup_timeout_s, flash.model.weights_bytes)
    unit = export(run_cli, *CASES["systemd-flash-2xH200"])
    timeout = int(
        next(line for line in unit.splitlines() if line.startswith("TimeoutStartSec=")).split("=")[1]
    )
    assert timeout > need
    k8s = list(yaml.safe_load_all(export(run_cli, *CASES["kubernetes-flash-2xH200"])))
    container = k8s[0]["spec"]["template"]["spec"]["containers"][0]
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= need
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    shm = next(v for v in k8s[0]["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    compose = yaml.safe_load(export(run_cli, *CASES["compose-flash-2xH200"]))
    server = compose["services"]["dsv4serve-flash"]
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    assert server["ports"] == ["127.0.0.1:8100:8100"] and "8100/health" in server["healthcheck"]["test"][-1]
    assert math.ceil(need) + 1 <= int(server["healthcheck"]["start_period"].rstrip("s"))


# After `up` gives up it still stops vLLM before it exits 5: 3 s grace, 5 s for the group, 5 s for the
# output drain (launch.Server.stop), and a probe on the way.
UP_STOP_S = 20


def _start_race(timeout_start_s: int, deadline_s: float, pre_s: float, stall_s: float, extend: bool):
    """A start under systemd, in 0.2 s ticks from the unit's start: vLLM starts after `pre_s`, reports
    progress every 5 s from 10 s until `stall_s`, never answers. `up`'s real deadline rule and its real
    StartExtension; systemd's timer as sd_notify(3) and systemd's service.c define it (TimeoutStartSec,
    then each EXTEND_TIMEOUT_USEC received in time moves it to at least its arrival + the value).
    Returns (when `up` gave up, when systemd's start timeout fires), in seconds from the unit's start."""
    from dsv4serve.serving import ready as launch_ready

    fires_at, now = float(timeout_start_s), 0.0

    def manager(message: str) -> None:
        nonlocal fires_at
        key, _, usec = message.partition("=")
        assert key == "EXTEND_TIMEOUT_USEC" and usec.isdigit(), message
        if now < fires_at:
            fires_at = max(fires_at, now + int(usec) / 1e6)

    extension = launch_ready.StartExtension(manager if extend else lambda message: None)
    progress_at = float("-inf")
    for tick in range(10**6):
        since = tick / 5  # seconds since vLLM started (up's clock)
        now = pre_s + since
        if 10 <= since <= stall_s and tick % 25 == 0:
            progress_at = since
        extension.update(since, progress_at)
        if launch_ready.past_deadline(since, deadline_s, progress_at) or now >= fires_at:
            return now, fires_at
    raise AssertionError("neither gave up")


def test_systemd_start_timeout_outlasts_up_while_vllm_reports_progress(run_cli, fixed_env):
    """TimeoutStartSec and up's EXTEND_TIMEOUT_USEC agree: whatever the progress, up's own exit 5 (its
    log tail in the journal) ends a start, never systemd's SIGTERM; yet a start that stalls ends."""
    from dsv4serve.profiles.load import load_profile
    from dsv4serve.serving.ready import PROGRESS_GRACE_S, startup_timeout

    flash = load_profile("flash")
    deadline = startup_timeout(flash.serve.startup_timeout_s, flash.model.weights_bytes)
    unit = export(run_cli, *CASES["systemd-flash-2xH200"])
    timeout_start = int(
        next(line for line in unit.splitlines() if line.startswith("TimeoutStartSec=")).split("=")[1]
    )
    for pre in (0, 60):  # planning and the weights check before vLLM starts
        for stall in (0, deadline / 2, deadline - 60, deadline - 1, deadline + 100, 3 * deadline):
            gave_up, fires = _start_race(timeout_start, deadline, pre, stall, extend=True)
            assert gave_up + UP_STOP_S < fires, (pre, stall, gave_up, fires)
            assert gave_up <= pre + max(deadline, stall + PROGRESS_GRACE_S) + 1  # it does end
    # Without the extensions, systemd would cut a start that up still waits for (progress near the end).
    gave_up, fires = _start_race(timeout_start, deadline, 0, deadline - 1, extend=False)
    assert fires <= gave_up


def test_lws_matches_its_published_crd_schema(run_cli, fixed_env):
    """The LeaderWorkerSet against the v1 openAPIV3Schema of kubernetes-sigs/lws's CRD (060ab4d, kept
    gzipped in tests/data): its own fields (size, restartPolicy), not only the pod templates."""
    import gzip

    import jsonschema

    schema = json.loads(gzip.decompress((COMPOSE_SCHEMA.parent / "lws-v1-schema.json.gz").read_bytes()))
    validator = jsonschema.Draft7Validator(schema)
    lws = next(yaml.safe_load_all(export(run_cli, *CASES["kubernetes-pro-2x8xH100"])))
    assert not [e.message for e in validator.iter_errors(lws)]
    lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "RecreateSometimes"
    assert list(validator.iter_errors(lws))


def test_lws_runs_one_pod_per_node_with_ranks(run_cli, fixed_env):
    lws = next(yaml.safe_load_all(export(run_cli, *CASES["kubernetes-pro-2x8xH100"])))
    assert lws["kind"] == "LeaderWorkerSet" and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["command"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    assert leader[leader.index("--node-rank") + 1] == "0"
    assert worker["command"][worker["command"].index("--node-rank") + 1] == "$(LWS_WORKER_INDEX)"
    assert "readinessProbe" not in worker and "ports" not in worker  # workers run vLLM headless


def test_secrets_are_referenced_never_written(run_cli, fixed_env, monkeypatch, tmp_path):
    token, key = "hf_exportSECRETtoken", "sk-exportSECRETkey"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("DSV4SERVE_API_KEY", key)
    for case in CASES:
        text = export(run_cli, *CASES[case])
        assert token not in text and key not in text
    k8s = export(run_cli, *CASES["kubernetes-flash-2xH200"])
    assert "secretKeyRef" in k8s and "kind: Secret" not in k8s
    assert "${DSV4SERVE_API_KEY:?" in export(run_cli, *CASES["compose-flash-2xH200"])


@pytest.mark.parametrize("case", ["compose-tiny", "compose-flash-2xH200", "systemd-flash-2xH200"])
def test_exported_up_command_is_accepted_by_up(run_cli, fixed_env, case):
    """The command a unit or container runs, given to `up --dry-run` here (declared GPUs for GPU plans)."""
    text = export(run_cli, *CASES[case])
    if case.startswith("compose"):
        doc = yaml.safe_load(text)
        argv = next(s for n, s in doc["services"].items() if n != "download")["command"]
    else:
        line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
        argv = line.removeprefix("ExecStart=").split()
    assert argv[1] == "up"
    assert dry_run_up(run_cli, argv[2:], "H200")["fits"] is True


def dry_run_up(run_cli, args: list[str], gpu: str) -> dict:
    """`up ARGS --dry-run --json` here: nothing can read GPUs, so --gpus N becomes --hardware NxGPU."""
    args = list(args)
    if "--gpus" in args:
        i = args.index("--gpus")
        args[i : i + 2] = ["--hardware", f"{args[i + 1]}x{gpu}"]
    result = run_cli("up", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("helm", "flash", "--hardware", "2xH200"), 2, "unknown format"),
        (("compose", "pro", "--hardware", "2x8xH100-80GB"), 2, "nodes"),
        (("systemd", "pro", "--hardware", "2x8xH100-80GB"), 2, "--master-addr"),
        (("kubernetes", "pro", "--hardware", "8xH100-80GB"), 3, "more memory"),
        (("compose", "no-such-profile"), 2, "no-such-profile"),
    ],
)
def test_refusals(run_cli, args, code, words):
    result = run_cli("export", *args)
    assert result.exit_code == code
    assert words in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_output_file(run_cli, fixed_env, tmp_path):
    out = tmp_path / "flash.yaml"
    result = run_cli("export", *CASES["kubernetes-flash-2xH200"], "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    assert out.read_text() == export(run_cli, *CASES["kubernetes-flash-2xH200"])


def _deployment(gpus: str, planned_gpus: str | None = None):
    """make_deployment over flash planned for 2xH200 with `planned_gpus` (default: the same --gpus)."""
    from dsv4serve.export.spec import make_deployment
    from dsv4serve.preflight.options import plan_from_options

    profile, plan = plan_from_options("flash", gpus=planned_gpus or gpus, hardware="2xH200")
    return make_deployment(
        profile,
        plan,
        profile_arg="flash",
        gpus=gpus,
        host="127.0.0.1",
        port=8000,
        up_options=(),
        startup_timeout_s=600,
        source="test",
    )


@pytest.mark.parametrize(
    ("gpus", "ids"),
    [("2", ()), ("1,0", ("1", "0")), (" 1, 0,", ("1", "0")), ("1,", ("1",))],
)
def test_deployment_reads_gpus_as_up_does(gpus, ids):
    """A count leaves the GPUs to `up`; a list (even of one, "1,") is the host's GPUs, named as given."""
    dep = _deployment(gpus)
    assert dep.gpu_ids == ids
    assert dep.gpu_count == (len(ids) or int(gpus))


def test_deployment_refuses_a_count_in_other_digits():
    """'²'.isdigit() is True, yet `up --gpus ²` refuses it: an export must not read it as a count."""
    from dsv4serve.errors import UsageError

    with pytest.raises(UsageError, match="--gpus"):
        _deployment("²", planned_gpus="2")
