"""Two "nodes" on one GPU machine (issue 11): `dsv4serve up tiny` twice, node 0 and node 1, each on its own
GPUs (CUDA_VISIBLE_DEVICES 0 and 1; or 0,1 and 2,3 with --per-node 2), master 127.0.0.1, real NCCL.

    source .gpuw/w2/device_setup.sh && PYTHONPATH=$PWD python3 scripts/gpu_nodes.py --out $OUT

Round "head": start both, one chat completion through the head, NVML memory per GPU against the plan's
`expected_used`, then Ctrl-C (SIGINT) on the head: both nodes must exit (head 0, worker 0) and leave no
vLLM process and no GPU memory behind. Round "worker": start both again, SIGINT the worker: the head
must stop too (exit 5, "worker node 1 left the deployment"). Everything raw lands in --out: each node's
output, the plans, nvidia-smi before/while/after, results.json. About 4 minutes on 2x H200.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_validate import nvml_used, vllm_pids  # noqa: E402 - one copy of each

CLI = [sys.executable, "-m", "dsv4serve"]
GIB = 2**30
MASTER_PORT, API_PORT = 29561, 8123


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def smi(out: Path, name: str) -> None:
    res = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,memory.used,memory.total", "--format=csv"],
        capture_output=True,
        text=True,
    )
    (out / f"nvidia-smi-{name}.csv").write_text(res.stdout + res.stderr)


def node_args(rank: int) -> list[str]:
    return [
        "up", "tiny", "--nodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
        "--master-port", str(MASTER_PORT), "--port", str(API_PORT), "--json", "--timeout", "200",
    ]  # fmt: skip


def devices(rank: int, per_node: int) -> str:
    return ",".join(str(rank * per_node + i) for i in range(per_node))


class Node:
    def __init__(self, rank: int, per_node: int, out: Path, tag: str):
        self.rank = rank
        self.path = out / f"{tag}-node{rank}.txt"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices(rank, per_node)}
        self.file = open(self.path, "w")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [*CLI, *node_args(rank)], stdout=self.file, stderr=subprocess.STDOUT, env=env
        )

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if needle in self.text():
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                return None
            time.sleep(0.5)
        return None

    def finish(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        finally:
            self.file.close()


def chat() -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    req = urllib.request.Request(
        f"http://127.0.0.1:{API_PORT}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=120) as resp:
        data = json.loads(resp.read())
    return {"s": round(time.monotonic() - t0, 3), "tokens": data["usage"]["completion_tokens"]}


def released(baseline: dict[int, int], gpus: list[int], timeout: float = 30) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        used = nvml_used()
        if all(used[g] - baseline[g] < 512 * 2**20 for g in gpus):
            return round(time.monotonic() - t0, 2)
        time.sleep(0.5)
    return None


def one_round(out: Path, tag: str, stop_rank: int, per_node: int, measure: bool) -> dict:
    gpus = list(range(2 * per_node))
    baseline = nvml_used()
    log(f"round {tag}: starting node 1 then node 0")
    t0 = time.monotonic()
    worker = Node(1, per_node, out, tag)
    head = Node(0, per_node, out, tag)
    result: dict = {"stop": "head" if stop_rank == 0 else "worker"}
    result["head_ready_s"] = head.wait_for('"event": "ready"', 240)
    result["worker_ready_s"] = worker.wait_for('"role": "worker"', 30)
    log(f"round {tag}: ready head {result['head_ready_s']} worker {result['worker_ready_s']}")
    if result["head_ready_s"] is not None:
        try:
            result["chat"] = chat()
        except Exception as err:  # noqa: BLE001 - recorded, the round goes on to the stop
            result["chat_error"] = repr(err)
        if measure:
            used = nvml_used()
            smi(out, f"{tag}-running")
            result["nvml_used_gib"] = {g: round((used[g] - baseline[g]) / GIB, 2) for g in gpus}
    victim = head if stop_rank == 0 else worker
    t_stop = time.monotonic()
    victim.proc.send_signal(signal.SIGINT)
    result["head_rc"] = head.finish(90)
    result["worker_rc"] = worker.finish(90)
    result["both_exited_s"] = round(time.monotonic() - t_stop, 2)
    result["vllm_left"] = vllm_pids()
    result["memory_released_s"] = released(baseline, gpus)
    smi(out, f"{tag}-after")
    result["round_s"] = round(time.monotonic() - t0, 1)
    text = head.text() + worker.text()
    keys = ("left the deployment", "the head ended the deployment", "error:")
    result["lines"] = [line for line in text.splitlines() if any(k in line for k in keys)]
    log(f"round {tag}: {json.dumps({k: v for k, v in result.items() if k != 'lines'})}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--per-node", type=int, default=1, help="GPUs per node (2 on a 4-GPU machine)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"per_node": a.per_node}
    smi(a.out, "before")
    for rank in (0, 1):  # each node's own plan, from its own GPUs (NVML), as up will make it
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices(rank, a.per_node)}
        args = [*CLI, "plan", "tiny", "--nodes", "2", "--master-addr", "127.0.0.1", "--json"]
        res = subprocess.run(args, capture_output=True, text=True, env=env)
        (a.out / f"plan-node{rank}.json").write_text(res.stdout + res.stderr)
        try:
            plan = json.loads(res.stdout)
            results[f"plan_node{rank}"] = {
                "expected_used_gib": [round(r["expected_used"] / GIB, 2) for r in plan["memory"]],
                "budget_gib": [round(r["budget"] / GIB, 2) for r in plan["memory"]],
                "argv": plan["nodes"][rank]["argv"],
            }
        except (json.JSONDecodeError, KeyError) as err:
            results[f"plan_node{rank}"] = {"error": repr(err)}
    results["head"] = one_round(a.out, "head", 0, a.per_node, measure=True)
    results["worker"] = one_round(a.out, "worker", 1, a.per_node, measure=False)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    log("done: " + str(a.out / "results.json"))


if __name__ == "__main__":
    main()
