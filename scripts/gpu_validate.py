"""Validation run on a real GPU machine (docs/validation.md records its output).

Drives the dsv4serve CLI as a user would, as subprocesses, and reads the truth beside it: nvidia-smi,
NVML per-GPU memory while the server runs, vLLM's own log figures, and the process table after stops.

    PYTHONPATH=$PWD python3 scripts/gpu_validate.py inventory serve --tp 1,2 --out $OUT
    PYTHONPATH=$PWD python3 scripts/gpu_validate.py smoke busy ratio --out $OUT

Phases: inventory (gpus vs nvidia-smi, plans from the real inventory), serve (up tiny at each TP,
memory measured vs planned, stopped with SIGINT / SIGTERM / SIGKILL of dsv4serve in turn), smoke
(`smoke tiny` per TP), busy (a second process holds GPU memory; what plan and up do), ratio
(time-to-ready of `up tiny` vs a bare `vllm serve` with the planner's own argv).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "dsv4serve"]
GIB = 2**30
LOG_FIGURES = {
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "kv_tokens": r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens",  # 0.30+ names the device
    "max_concurrency": r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(args: list[str], out: Path, name: str, timeout: float = 600) -> dict:
    """Run a command, keep its output in out/name.txt, return exit code, wall time and stdout."""
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    (out / f"{name}.txt").write_text(
        f"$ {' '.join(args)}\n# rc={proc.returncode} wall={wall:.2f}s\n"
        f"{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    log(f"{name}: rc={proc.returncode} in {wall:.1f}s")
    return {"rc": proc.returncode, "wall_s": round(wall, 2), "stdout": proc.stdout}


def nvml_used() -> dict[int, int]:
    import pynvml

    pynvml.nvmlInit()
    try:
        return {
            i: pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
            for i in range(pynvml.nvmlDeviceGetCount())
        }
    finally:
        pynvml.nvmlShutdown()


def vllm_pids() -> list[int]:
    """vLLM servers (python -m vllm.entrypoints...), EngineCores and workers, anywhere on the machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if "vllm.entrypoints" in cmd or comm.startswith(("VLLM", "EngineCore", "Worker")):
            pids.append(int(entry.name))
    return [p for p in pids if p != os.getpid()]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def chat(port: int, model: str) -> dict:
    """One streamed chat completion: time to first token, tokens/s."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 32,
            "stream": True,
            "temperature": 0,
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    first, chunks = None, 0
    with urllib.request.urlopen(req, timeout=120) as resp:
        for line in resp:
            if line.startswith(b"data: {"):
                chunks += 1
                first = first or time.monotonic()
    end = time.monotonic()
    return {
        "ttft_s": round((first or end) - t0, 3),
        "chunks": chunks,
        "tokens_per_s": round(chunks / max(end - (first or end), 1e-6), 1) if chunks > 1 else None,
    }


def parse_figures(text: str) -> dict:
    figures = {}
    for key, pattern in LOG_FIGURES.items():
        found = re.findall(pattern, text)
        if found:
            figures[key] = [float(v.replace(",", "")) for v in found]
    return figures


def wait_released(gpus: list[int], baseline: dict[int, int], deadline_s: float = 30) -> float | None:
    """Seconds until no vLLM process remains and the GPUs' used memory is back near its baseline."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        used = nvml_used()
        if not vllm_pids() and all(used[g] <= baseline[g] + 64 * 2**20 for g in gpus):
            return round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    return None


def phase_inventory(out: Path, results: dict) -> None:
    smi = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=index,name,uuid,memory.total,memory.used,memory.free,compute_cap,driver_version",
            "--format=csv",
        ],
        capture_output=True,
        text=True,
    )
    (out / "nvidia-smi.csv").write_text(smi.stdout)
    results["nvidia_smi"] = smi.stdout.strip().splitlines()
    results["gpus"] = json.loads(run([*CLI, "gpus", "--json"], out, "gpus")["stdout"] or "null")
    run([*CLI, "gpus"], out, "gpus-table")
    plans = {}
    for name, args in {
        "flash-2": ["flash", "--gpus", "2"],
        "pro-all": ["pro"],
        "tiny-1": ["tiny", "--gpus", "1"],
        "tiny-2": ["tiny", "--gpus", "2"],
        "tiny-4": ["tiny", "--gpus", "4"],
    }.items():
        res = run([*CLI, "plan", *args, "--json"], out, f"plan-{name}")
        run([*CLI, "plan", *args], out, f"plan-{name}-table")
        plans[name] = {"rc": res["rc"], "plan": json.loads(res["stdout"]) if res["stdout"].strip() else None}
    results["plans"] = plans


def start_up(out: Path, gpus: str, port: int, extra: list[str] = (), profile: str = "tiny"):
    logf = out / f"up-{gpus.replace(',', '_')}-{port}.log"
    proc = subprocess.Popen(
        [*CLI, "up", profile, "--gpus", gpus, "--port", str(port), *extra],
        stdout=logf.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, logf


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 400) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return None
        if ready(port):
            return round(time.monotonic() - t0, 2)
        time.sleep(0.25)
    return None


def phase_serve(out: Path, results: dict, tps: list[int], profile: str = "tiny", key: str = "serve") -> None:
    stops = {1: ("SIGINT", signal.SIGINT), 2: ("SIGTERM", signal.SIGTERM), 4: ("SIGKILL", signal.SIGKILL)}
    runs = {}
    for tp in tps:
        baseline = nvml_used()
        plan = json.loads(
            run([*CLI, "plan", profile, "--gpus", str(tp), "--json"], out, f"{key}plan-{tp}")["stdout"]
        )
        gpus = [int(g["index"]) if isinstance(g, dict) else int(g) for g in plan["gpus"]]
        port = 8200 + tp
        proc, logf = start_up(out, str(tp), port, profile=profile)
        entry = {
            "plan": {k: plan.get(k) for k in ("tensor_parallel_size", "max_model_len", "memory")},
            "gpus": gpus,
            "baseline_used": {g: baseline[g] for g in gpus},
        }
        entry["health_s"] = wait_ready(proc, port)
        if entry["health_s"] is not None:
            time.sleep(2)  # let `up` finish its own one-token readiness request
            entry["chat"] = chat(port, "tiny")
            used = nvml_used()
            entry["nvml_used_during"] = {g: used[g] for g in gpus}
            entry["nvml_delta_gib"] = {g: round((used[g] - baseline[g]) / GIB, 3) for g in gpus}
            expected = {int(r["device"]): r["expected_used"] for r in plan["memory"]}
            entry["predicted_over_measured"] = {
                g: round(expected[g] / (used[g] - baseline[g]), 4) for g in gpus if expected.get(g)
            }
        name, sig = stops.get(tp, ("SIGINT", signal.SIGINT))
        t0 = time.monotonic()
        proc.send_signal(sig)
        try:
            entry["dsv4serve_rc"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            entry["dsv4serve_rc"] = "still running after 60 s"
        entry["stop_signal"] = name
        entry["released_s"] = wait_released(gpus, baseline)
        entry["stop_total_s"] = round(time.monotonic() - t0, 2)
        entry["left_pids"] = vllm_pids()
        entry["vllm_log_figures"] = parse_figures(logf.read_text(errors="replace"))
        runs[f"tp{tp}"] = entry
        log(f"tp{tp}: {json.dumps(entry)[:600]}")
        for pid in entry["left_pids"]:  # never leave a stray server for the next phase
            os.kill(pid, signal.SIGKILL)
    results[key] = runs


def phase_holdout(out: Path, results: dict) -> None:
    """Out-of-sample check of the memory model: a user profile at utilization 0.6, TP 2."""
    yaml_path = Path("/tmp/gpuval/tiny06.yaml")
    yaml_path.write_text("name: tiny06\nextends: tiny\nserve: {gpu_memory_utilization: 0.6}\n")
    phase_serve(out, results, [2], profile=str(yaml_path), key="holdout")


def phase_smoke(out: Path, results: dict, tps: list[int]) -> None:
    results["smoke"] = {}
    for tp in tps:
        res = run([*CLI, "smoke", "tiny", "--gpus", str(tp), "--json"], out, f"smoke-tp{tp}")
        try:
            results["smoke"][f"tp{tp}"] = {"rc": res["rc"], **json.loads(res["stdout"])}
        except (json.JSONDecodeError, TypeError):
            results["smoke"][f"tp{tp}"] = {"rc": res["rc"], "stdout": res["stdout"][-2000:]}


def phase_busy(out: Path, results: dict) -> None:
    """Hold 100 GiB on GPU 0 from another process, then ask dsv4serve to use GPU 0."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import torch, time; x = torch.empty(100 * 2**30, dtype=torch.uint8, device='cuda:0');"
            "print('held', flush=True); time.sleep(900)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    holder.stdout.readline()
    busy = {"held_gib": 100}
    busy["gpus"] = json.loads(run([*CLI, "gpus", "--json"], out, "busy-gpus")["stdout"] or "null")
    for name, args in {
        "plan-tiny-gpu0": ["plan", "tiny", "--gpus", "0,", "--json"],
        "plan-tiny-n1": ["plan", "tiny", "--gpus", "1", "--json"],
        "plan-flash-gpus-0-1": ["plan", "flash", "--gpus", "0,1", "--json"],
    }.items():
        res = run([*CLI, *args], out, f"busy-{name}")
        busy[name] = {"rc": res["rc"], "plan": json.loads(res["stdout"]) if res["stdout"].strip() else None}
    baseline = nvml_used()
    proc, logf = start_up(out, "0,", 8299)  # GPU 0 explicitly: the one being held
    health = wait_ready(proc, 8299, timeout=300)
    busy["up_gpu0_health_s"] = health
    if health is not None:
        time.sleep(2)
        plan = busy["plan-tiny-gpu0"]["plan"] or {}
        expected = (plan.get("memory") or [{}])[0].get("expected_used")
        delta = nvml_used()[0] - baseline[0]
        busy["up_gpu0_nvml_delta_gib"] = round(delta / GIB, 3)
        busy["up_gpu0_predicted_over_measured"] = round(expected / delta, 4) if expected else None
    proc.send_signal(signal.SIGINT)
    try:
        busy["up_gpu0_rc"] = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        busy["up_gpu0_rc"] = "still running"
    busy["up_gpu0_released_s"] = wait_released([0], baseline)
    busy["up_gpu0_log_tail"] = logf.read_text(errors="replace").splitlines()[-15:]
    holder.kill()
    holder.wait()
    results["busy"] = busy


def phase_ratio(out: Path, results: dict, rounds: int) -> None:
    plan = json.loads(run([*CLI, "plan", "tiny", "--gpus", "2", "--json"], out, "ratio-plan")["stdout"])
    up_times, bare_times = [], []
    for r in range(rounds):
        for kind in ("bare", "up"):
            port = 8400 + r * 2 + (kind == "up")
            if kind == "up":
                proc, _ = start_up(out, "2", port)
            else:
                argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *plan["args"]]
                argv[argv.index("--port") + 1] = str(port)
                env = {**os.environ, **plan["env"]}
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdout=(out / f"bare-{r}.log").open("w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            t = wait_ready(proc, port)
            (up_times if kind == "up" else bare_times).append(t)
            if kind == "up":
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
            else:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=60)
            wait_released([0, 1], {0: 0, 1: 0} | nvml_used(), deadline_s=20)
    results["ratio"] = {"up_s": up_times, "bare_s": bare_times}
    if all(up_times) and all(bare_times):
        results["ratio"]["up_over_bare"] = round(sum(up_times) / sum(bare_times), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("phases", nargs="+")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    logs = Path("/tmp/gpuval") / "-".join(a.phases)  # many files: only a tarball goes back in $OUT
    logs.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    tps = [int(t) for t in a.tp.split(",")]
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": os.uname().nodename}
    phases = {
        "inventory": lambda: phase_inventory(logs, results),
        "serve": lambda: phase_serve(logs, results, tps),
        "smoke": lambda: phase_smoke(logs, results, tps),
        "holdout": lambda: phase_holdout(logs, results),
        "busy": lambda: phase_busy(logs, results),
        "ratio": lambda: phase_ratio(logs, results, a.rounds),
    }
    try:
        for phase in a.phases:
            log(f"phase {phase}")
            try:
                phases[phase]()
            except Exception as err:  # keep going: the other phases' evidence is still worth having
                results.setdefault("errors", []).append(f"{phase}: {type(err).__name__}: {err}")
                log(f"phase {phase} failed: {err!r}")
    finally:
        name = "-".join(a.phases)
        (a.out / f"results-{name}.json").write_text(json.dumps(results, indent=2, default=str))
        with tarfile.open(a.out / f"logs-{name}.tar.gz", "w:gz") as tar:
            tar.add(logs, arcname=f"logs-{name}")
        print(json.dumps(results, indent=1, default=str)[-6000:])


if __name__ == "__main__":
    main()
