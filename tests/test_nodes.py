"""Nodes: declared nodes x GPUs, strategies and memory per GPU, each node's command, the head-worker line,
and `up` on each node (real processes standing in for vLLM; the real vLLM is in test_nodes_live.py)."""

from __future__ import annotations

import json
import shlex
import socket
import sys
import threading
import time

import pytest

from dsv4serve.errors import HardwareError, LaunchError
from dsv4serve.hardware.inventory import parse_hardware
from dsv4serve.nodes.control import HeadLink, HeadStopped, WorkerLink
from dsv4serve.nodes.supervise import fingerprint, run_node
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.planning.strategy import pp_partition, stage_profiles, weights_per_gpu
from dsv4serve.profiles.load import load_profile
from dsv4serve.serving import procs
from dsv4serve.serving.spec import Event, LaunchSpec

GiB = 1 << 30


def plan_for(name: str, hardware: str, **overrides):
    profile = load_profile(name)
    if profile.model.generate:
        overrides.setdefault("model_location", "/models/tiny")
    inventory = parse_hardware(hardware)
    return make_plan(profile, inventory.gpus, Overrides(**overrides), nodes=inventory.nodes)


def flag(argv, name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# --- nodes x GPUs in the hardware model ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "hint"), [("16xH100-80GB", "2x8xH100-80GB"), ("64xH100-80GB", "8x8xH100-80GB")]
)
def test_more_gpus_than_a_node_holds_is_refused_with_the_nodes_to_write(spec, hint):
    with pytest.raises(HardwareError) as err:
        parse_hardware(spec)
    assert err.value.exit_code == 3 and "one node holds at most 8" in err.value.message
    assert f"--hardware {hint}" in err.value.hint


def test_cli_16xh100_exits_3_with_the_hint(run_cli):
    result = run_cli("plan", "pro", "--hardware", "16xH100-80GB")
    assert result.exit_code == 3 and "--hardware 2x8xH100-80GB" in result.stderr


def test_nodes_x_gpus_declares_one_nodes_gpus():
    inv = parse_hardware("2x8xH100-80GB")
    assert inv.nodes == 2 and len(inv.gpus) == 8 and {g.name for g in inv.gpus} == {"H100-80GB"}
    with pytest.raises(HardwareError):
        parse_hardware("2x16xH100-80GB")


CASES = [
    (profile, hw, strategy)
    for profile in ("pro", "flash", "tiny")
    for hw in ("2x8xH100-80GB", "8x8xH100-80GB", "2x8xH200", "4x8xB200", "2x4xH100-80GB")
    for strategy in (None, "tp", "tp-ep", "dp-ep", "tp-pp")
]


@pytest.mark.parametrize(("profile", "hardware", "strategy"), CASES)
def test_no_plan_puts_more_gpus_on_a_node_than_it_holds(profile, hardware, strategy):
    inv = parse_hardware(hardware)
    plan = plan_for(profile, hardware, strategy=strategy, master_addr="10.0.0.1")
    world = plan.tensor_parallel_size * plan.pipeline_parallel_size * plan.data_parallel_size
    assert len(plan.nodes) == inv.nodes and world == inv.nodes * len(inv.gpus)
    assert world // len(plan.nodes) <= 8
    for node in plan.nodes:
        assert len(dict(node.env)["CUDA_VISIBLE_DEVICES"].split(",")) <= 8
        local = flag(node.argv, "--data-parallel-size-local")
        assert local is None or int(local) * plan.tensor_parallel_size <= 8
        if flag(node.argv, "--nnodes"):
            assert (
                int(flag(node.argv, "--nnodes")) == inv.nodes
                and int(flag(node.argv, "--node-rank")) == node.rank
            )


def test_suggestions_never_put_16_gpus_in_a_node():
    plan = plan_for("pro", "8xH100-80GB")
    assert "2x8xH100-80GB" in plan.suggestions
    for layout in plan.suggestions:
        parse_hardware(layout)  # a declared node above 8 GPUs would raise
        assert plan_for("pro", layout).fits


# --- strategies, and memory per GPU -------------------------------------------------------------------


def test_pro_on_two_h100_nodes_is_tp_ep_16_because_dp_ep_does_not_fit():
    plan = plan_for("pro", "2x8xH100-80GB")
    assert plan.fits and plan.strategy == "tp-ep" and plan.tensor_parallel_size == 16
    assert "--enable-expert-parallel" in plan.args and "DP 16" in plan.strategy_reason
    assert plan.memory[0].weights == -(-865_000_000_000 // 16)


def test_pro_on_two_h200_nodes_is_dp_ep_with_dense_weights_on_every_gpu():
    profile = load_profile("pro")
    plan = plan_for("pro", "2x8xH200")
    experts, dense = (
        profile.model.expert_weights_bytes,
        profile.model.weights_bytes - profile.model.expert_weights_bytes,
    )
    assert plan.strategy == "dp-ep" and plan.data_parallel_size == 16 and plan.tensor_parallel_size == 1
    assert plan.memory[0].weights == dense + -(-experts // 16)
    assert "recipe" in plan.strategy_reason and "dense weights" in plan.strategy_reason


def test_dp_ep_replicates_more_than_tp_ep_on_one_node():
    tp = plan_for("flash", "8xH200")
    dp = plan_for("flash", "8xH200", strategy="dp-ep")
    assert tp.strategy == "tp-ep" and dp.strategy == "dp-ep"
    assert dp.memory[0].weights > tp.memory[0].weights
    assert flag(dp.args, "--data-parallel-size") == "8" and flag(dp.args, "--tensor-parallel-size") == "1"
    assert "pinned by --strategy dp-ep" in dp.strategy_reason


def test_tp_pp_holds_a_stage_of_layers_and_its_own_kv_cache():
    full = plan_for("pro", "2x8xH200", strategy="tp-ep")
    pp = plan_for("pro", "2x8xH200", strategy="tp-pp")
    assert pp.tensor_parallel_size == 8 and pp.pipeline_parallel_size == 2
    assert flag(pp.args, "--pipeline-parallel-size") == "2"
    assert pp.memory[0].weights == full.memory[0].weights  # 1/16 either way
    assert pp.memory[0].kv_cache < full.memory[0].kv_cache  # a stage caches its own layers only
    assert pp_partition(61, 2) == [31, 30] and pp_partition(43, 4) == [11, 11, 11, 10]
    stages = stage_profiles(load_profile("pro"), type("L", (), {"pp": 2})())
    assert [len(s.model.kv_cache.compress_ratios) for s in stages] == [31, 30]


def test_unknown_expert_share_counts_every_weight_as_dense():
    profile = load_profile("tiny")
    plan = plan_for("tiny", "2x1xH200", strategy="dp-ep")
    assert plan.memory[0].weights == profile.model.weights_bytes
    assert any("expert_weights_bytes is unknown" in n for n in plan.notes)


def test_weights_per_gpu_follow_the_strategy():
    from dsv4serve.planning.strategy import Layout

    pro = load_profile("pro")
    w, e = pro.model.weights_bytes, pro.model.expert_weights_bytes
    assert weights_per_gpu(pro, Layout("tp-ep", 16, nodes=2)) == -(-w // 16)
    assert weights_per_gpu(pro, Layout("tp-pp", 8, pp=2, nodes=2)) == -(-w // 16)
    assert weights_per_gpu(pro, Layout("dp-ep", 2, dp=8, nodes=2)) == -(-(w - e) // 2) + -(-e // 16)


def test_one_node_plans_look_exactly_as_before(run_cli):
    plan = plan_for("flash", "2xH200")
    assert plan.strategy == "tp-ep" and [n.role for n in plan.nodes] == ["head"]
    assert plan.nodes[0].argv == ("vllm", "serve", *plan.args)
    assert "--nnodes" not in plan.args and "--data-parallel-size" not in plan.args
    text = run_cli("plan", "flash", "--hardware", "2xH200").stdout
    assert "node 0" not in text and "strategy:" not in text and "TP 2, max_model_len" in text
    data = json.loads(run_cli("plan", "flash", "--hardware", "2xH200", "--json").stdout)
    assert data["nodes"] == [{"rank": 0, "role": "head", "argv": data["argv"], "env": data["env"]}]


def test_a_profile_rule_with_nodes_pins_its_strategy(tmp_path, run_cli):
    path = tmp_path / "pp.yaml"
    path.write_text(
        "name: pp\nextends: pro\nhardware:\n"
        "  - {nodes: 2, gpus: 8, min_vram_gib: 75, tensor_parallel_size: 8, strategy: tp-pp}\n"
    )
    data = json.loads(run_cli("plan", str(path), "--hardware", "2x8xH100-80GB", "--json").stdout)
    assert data["strategy"] == "tp-pp" and data["pipeline_parallel_size"] == 2
    assert "hardware[0]" in data["strategy_reason"]


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (
            "{nodes: 2, gpus: 8, min_vram_gib: 75, tensor_parallel_size: 8, strategy: fast}",
            "hardware[0].strategy",
        ),
        (
            "{nodes: 2, gpus: 8, min_vram_gib: 75, tensor_parallel_size: 3}",
            "hardware[0].tensor_parallel_size",
        ),
        ("{nodes: 0, gpus: 8, min_vram_gib: 75, tensor_parallel_size: 8}", "hardware[0].nodes"),
    ],
)
def test_bad_node_rules_name_the_field(tmp_path, run_cli, rule, field):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nextends: pro\nhardware:\n  - {rule}\n")
    result = run_cli("profiles", "validate", str(path))
    assert result.exit_code == 2 and field in result.stdout + result.stderr


# --- each node's command ------------------------------------------------------------------------------


def test_each_node_gets_vllms_multi_node_flags():
    plan = plan_for("pro", "2x8xH100-80GB", master_addr="10.0.0.1", master_port=29600)
    head, worker = plan.nodes
    assert (head.role, worker.role) == ("head", "worker")
    assert flag(head.argv, "--nnodes") == "2" and flag(head.argv, "--node-rank") == "0"
    assert flag(worker.argv, "--node-rank") == "1" and flag(worker.argv, "--master-addr") == "10.0.0.1"
    assert flag(worker.argv, "--master-port") == "29600"
    assert "--headless" in worker.argv and "--headless" not in head.argv
    assert "--port" in head.argv and "--port" not in worker.argv
    assert plan.args == head.argv[2:]


def test_dp_ep_nodes_get_local_size_start_rank_and_rpc_port():
    plan = plan_for("flash", "2x8xH100-80GB", master_addr="10.0.0.1")
    head, worker = plan.nodes
    assert plan.strategy == "dp-ep"
    for node in plan.nodes:
        assert flag(node.argv, "--data-parallel-size") == "16"
        assert flag(node.argv, "--data-parallel-size-local") == "8"
        assert flag(node.argv, "--data-parallel-address") == "10.0.0.1"
        assert flag(node.argv, "--data-parallel-rpc-port") == "29501"
    assert flag(worker.argv, "--data-parallel-start-rank") == "8" and "--headless" in worker.argv
    assert "--data-parallel-start-rank" not in head.argv and "--nnodes" not in head.argv


def test_ray_executor_runs_vllm_on_the_head_only():
    plan = plan_for("pro", "2x8xH100-80GB", master_addr="10.0.0.1", executor="ray")
    head, worker = plan.nodes
    assert flag(head.argv, "--distributed-executor-backend") == "ray" and "--nnodes" not in head.argv
    assert worker.argv == ("ray", "start", "--address=10.0.0.1:6379", "--block")
    assert any("ray start --head" in n for n in plan.notes)


def test_cli_prints_each_nodes_command_ready_to_paste(run_cli):
    args = ("plan", "pro", "--hardware", "2x8xH100-80GB", "--master-addr", "10.0.0.1")
    text = run_cli(*args).stdout
    data = json.loads(run_cli(*args, "--json").stdout)
    assert "node 0 (head: serves the API on 127.0.0.1:8000):" in text and "node 1 (worker: headless):" in text
    lines = text.splitlines()
    for node in data["nodes"]:
        line = next(lines[i + 1] for i, row in enumerate(lines) if row.startswith(f"node {node['rank']} "))
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[: words.index("vllm")])
        assert words[words.index("vllm") :] == node["argv"] and env == node["env"]
    assert "dsv4serve up pro --strategy tp-ep --nodes 2 --node-rank 1 --master-addr 10.0.0.1" in text


def test_without_master_addr_the_commands_say_head_addr(run_cli):
    result = run_cli("plan", "pro", "--hardware", "2x8xH100-80GB")
    assert result.exit_code == 0 and "--master-addr HEAD_ADDR" in result.stdout
    assert "pass --master-addr" in result.stdout


def test_secrets_are_masked_on_every_node(tmp_path, run_cli):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nextends: pro\nserve: {env: {HF_TOKEN: hf_verysecret123}}\n")
    out = run_cli("plan", str(path), "--hardware", "2x8xH100-80GB", "--json").stdout
    assert (
        "hf_verysecret123" not in out and json.loads(out)["nodes"][1]["env"]["HF_TOKEN"] != "hf_verysecret123"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plan", "pro", "--hardware", "2x8xH100-80GB", "--nodes", "3"), "disagree"),
        (("plan", "pro", "--hardware", "2x8xH200", "--strategy", "fast"), "unknown"),
        (("plan", "pro", "--hardware", "8xH200", "--strategy", "tp-pp"), "separate nodes"),
        (("plan", "pro", "--hardware", "2x8xH200", "--executor", "slurm"), "unknown"),
        (("up", "tiny", "--nodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1"), "ranks 0 to 1"),
        (("up", "tiny", "--nodes", "2"), "needs --master-addr"),
        (("up", "tiny", "--nodes", "2", "--node-rank", "1", "--master-addr", "a b"), "not an IP"),
        (
            (
                "up",
                "pro",
                "--nodes",
                "2",
                "--node-rank",
                "1",
                "--master-addr",
                "10.0.0.1",
                "--executor",
                "ray",
            ),
            "ray start",
        ),
    ],
)
def test_bad_node_options_are_usage_errors(run_cli, args, message):
    result = run_cli(*args)
    assert result.exit_code == 2 and message in result.stderr


def test_cpu_nodes_bind_their_own_cores():
    profile = load_profile("tiny")
    one = make_plan(profile, (), Overrides(model_location="/m", device="cpu"), host_cpus=2, nodes=2)
    assert one.tensor_parallel_size == 2 and flag(one.args, "--tensor-parallel-size") == "2"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in dict(one.nodes[1].env)  # one rank per node: the node's own
    two = make_plan(
        profile,
        (),
        Overrides(model_location="/m", device="cpu", tensor_parallel_size=4),
        host_cpus=2,
        nodes=2,
    )
    assert flag(two.nodes[1].argv, "--tensor-parallel-size") == "4"
    assert dict(two.nodes[1].env)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


# --- the line between the head and its workers --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - the caller checks what was raised
            return True
        time.sleep(0.05)
    return False


def link_pair(fp_head="f1", fp_worker="f1"):
    port, said = free_port(), []
    head = HeadLink("127.0.0.1", port, 2, fp_head, "pro tp-ep", lambda k, t: said.append(t))
    worker = WorkerLink("127.0.0.1", port, 1, 2, fp_worker, "pro dp-ep", lambda k, t: said.append(t))
    return head, worker, said


def test_worker_is_ready_when_the_head_says_so_and_stops_with_it():
    head, worker, said = link_pair()
    worker.start()  # before the head listens: it waits for it
    time.sleep(0.3)
    head.start()
    assert wait_for(lambda: any("joined" in s for s in said))
    assert worker.check() is False and head.check() is True
    head.ready()
    assert wait_for(worker.check)
    head.stop("the head node is stopping")
    assert wait_for(lambda: worker.check() and False, 3.0)
    with pytest.raises(HeadStopped, match="stopping"):
        worker.check()
    worker.close()
    head.close()


def test_a_worker_that_leaves_stops_the_head():
    head, worker, said = link_pair()
    head.start()
    worker.start()
    assert wait_for(lambda: any("joined" in s for s in said))
    worker.close()
    assert wait_for(lambda: head.check() and False, 3.0)
    with pytest.raises(LaunchError, match="worker node 1 left the deployment") as err:
        head.check()
    assert err.value.exit_code == 5
    head.stop("done")
    head.close()


def test_a_head_that_vanishes_is_a_clear_error_on_the_worker():
    head, worker, said = link_pair()
    head.start()
    worker.start()
    assert wait_for(lambda: any("joined" in s for s in said))
    head.ready()
    assert wait_for(worker.check)
    head._stopped.set()  # as if its process died: the sockets close without a STOP
    head._server.close()
    head.close()
    assert wait_for(lambda: worker.check() and False, 3.0)
    with pytest.raises(LaunchError, match="lost the head node at 127.0.0.1") as err:
        worker.check()
    assert err.value.exit_code == 5
    worker.close()


def test_nodes_with_different_plans_refuse_each_other():
    head, worker, said = link_pair(fp_worker="f2")
    head.start()
    worker.start()
    assert wait_for(lambda: worker.check() and False, 3.0)
    with pytest.raises(
        LaunchError, match="refused this node: the head plans pro tp-ep; that node plans pro dp-ep"
    ):
        worker.check()
    assert head.check() is True  # a refused node never joined
    worker.close()
    head.stop("done")
    head.close()


def test_the_head_listens_on_its_own_address_only():
    with pytest.raises(LaunchError, match="cannot listen on 203.0.113.77") as err:
        HeadLink("203.0.113.77", free_port(), 2, "f", "s", lambda k, t: None).start()
    assert "this head node's own address" in err.value.hint


# --- up on each node, with real processes standing in for vLLM ---------------------------------------

API = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        body = json.dumps({'choices': [{'text': 'x'}]}).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
print('serving', flush=True)
HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"""
HEADLESS = "import time\nprint('headless', flush=True)\ntime.sleep(300)"


class Node(threading.Thread):
    def __init__(self, rank: int, master_port: int, api_port: int):
        super().__init__(daemon=True)
        plan = plan_for("tiny", "2x1xH200", master_addr="127.0.0.1", master_port=master_port)
        code, args = (API, [str(api_port)]) if rank == 0 else (HEADLESS, [])
        self.spec = LaunchSpec(
            argv=(sys.executable, "-c", code, *args),
            host="127.0.0.1",
            port=api_port,
            served_model_name="tiny",
            startup_timeout_s=30,
            grace_s=2.0,
            headless=rank > 0,
        )
        self.plan, self.rank, self.master_port = plan, rank, master_port
        self.events: list[Event] = []
        self.code: int | None = None
        self.error: Exception | None = None
        self.ready = threading.Event()

    def run(self):
        try:
            self.code = run_node(
                self.spec,
                self.plan,
                self.rank,
                "127.0.0.1",
                self.master_port,
                self.events.append,
                lambda server: self.ready.set(),
            )
        except Exception as err:  # noqa: BLE001 - the test reads it
            self.error = err

    def pgid(self) -> int:
        return next(
            int(e.text.split("pid ")[1].split(" ")[0])
            for e in self.events
            if e.kind == "started" and "pid" in e.text
        )


def two_nodes():
    master, api = free_port(), free_port()
    while api in (master, master + 1):  # master + 1 is the nodes' own control port
        api = free_port()
    worker, head = Node(1, master, api), Node(0, master, api)
    worker.start()
    head.start()
    for node, wait_s in ((head, 20), (worker, 10)):
        assert node.ready.wait(wait_s), (node.rank, node.code, node.error, [e.text for e in node.events][-6:])
    return head, worker


def test_stopping_the_heads_vllm_ends_the_worker_cleanly():
    head, worker = two_nodes()
    hp, wp = head.pgid(), worker.pgid()
    procs.signal_group(hp, 15)  # the head's server ends: the head tells its workers
    head.join(15)
    worker.join(15)
    assert not head.is_alive() and not worker.is_alive()
    assert worker.code == 0 and worker.error is None
    assert any("the head ended the deployment" in e.text for e in worker.events)
    assert procs.wait_group_gone(hp, 5) and procs.wait_group_gone(wp, 5)


def test_a_lost_worker_stops_the_head_with_a_clear_line():
    head, worker = two_nodes()
    hp, wp = head.pgid(), worker.pgid()
    procs.signal_group(wp, 9)  # the worker's vLLM dies: its dsv4serve ends, and the line with it
    worker.join(15)
    head.join(20)
    assert not head.is_alive()
    assert isinstance(head.error, LaunchError) and "worker node 1 left the deployment" in head.error.message
    assert procs.wait_group_gone(hp, 5) and procs.wait_group_gone(wp, 5)


def test_fingerprints_agree_for_the_same_plan_only():
    a = plan_for("pro", "2x8xH100-80GB")
    b = plan_for("pro", "2x8xH100-80GB", master_addr="10.0.0.9")
    c = plan_for("pro", "2x8xH200")
    assert fingerprint(a) == fingerprint(b) and fingerprint(a)[0] != fingerprint(c)[0]


@pytest.mark.parametrize("rank", ["²", "1" * 4000, "-1", ""])
def test_a_hello_with_no_count_in_it_is_refused_and_the_head_keeps_listening(rank):
    head, worker, said = link_pair()
    head.start()
    with socket.create_connection(("127.0.0.1", head.port), timeout=5) as sock:
        sock.sendall(f"HELLO {rank} 2 f1 pro\n".encode())
        assert sock.recv(4096).decode().startswith("NO not a dsv4serve worker node")
    worker.start()  # the refusal did not stop the head from taking the real worker
    assert wait_for(lambda: any("joined" in s for s in said))
    worker.close()
    head.stop("done")
    head.close()
