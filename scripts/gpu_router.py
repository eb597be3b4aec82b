"""The one-command pair on a GPU (issue 14): `route --flash tiny --pro tiny` with both on GPU 0.

    source .gpuw/w2/device_setup.sh && PYTHONPATH=$PWD python3 scripts/gpu_router.py --out $OUT

Starts the router and both tiny servers by one command (4 router workers), checks that NVML shows both
servers' memory, routes by rule to each (plain and streaming) and once by Flash's classification,
reads /metrics, stops everything with SIGINT (as Ctrl-C) and checks that the GPU memory and every
process are released. Raw output and results.json land in --out. About 2 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_validate import nvml_used, vllm_pids  # noqa: E402 - one copy

PORT = 8140
PROFILE = """\
name: gpu-pair
classifier: {prompt: "Classify: complex = code generation or logical calculation; else simple."}
rules:
  - {name: pro-tag, route: pro, when: {contains: ["#pro"]}}
  - {name: flash-tag, route: flash, when: {contains: ["#flash"]}}
"""


def chat(client: httpx.Client, text: str, stream: bool = False) -> dict:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    url = f"http://127.0.0.1:{PORT}/v1/chat/completions"
    t0 = time.perf_counter()
    if stream:
        with client.stream("POST", url, json={**body, "stream": True}) as resp:
            chunks = [line for line in resp.iter_lines() if line.startswith("data: ")]
            headers, status = resp.headers, resp.status_code
        extra = {"chunks": len(chunks), "done": bool(chunks) and chunks[-1] == "data: [DONE]"}
    else:
        resp = client.post(url, json=body)
        headers, status, extra = resp.headers, resp.status_code, {}
    return {
        "status": status,
        "route": headers.get("x-dsv4serve-route"),
        "reason": headers.get("x-dsv4serve-route-reason"),
        "proxy_ms": float(headers.get("x-dsv4serve-proxy-ms") or "nan"),
        "wall_ms": round((time.perf_counter() - t0) * 1000, 1),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    (out / "pair.yaml").write_text(PROFILE)
    results: dict = {"baseline": nvml_used(), "vllm_before": vllm_pids()}
    argv = [sys.executable, "-m", "dsv4serve", "route", str(out / "pair.yaml"), "--flash", "tiny"]
    argv += ["--pro", "tiny", "--flash-gpus", "0,", "--pro-gpus", "0,", "--port", str(PORT), "--workers", "4"]
    log = (out / "route.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(trust_env=False, timeout=120)
    try:
        while time.monotonic() - t0 < 420:
            if proc.poll() is not None:
                break
            try:
                if client.get(f"http://127.0.0.1:{PORT}/v1/models").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        results["ready_s"] = round(time.monotonic() - t0, 1)
        results["during"] = nvml_used()
        text = (out / "route.log").read_text()
        results["groups"] = {
            m[0]: int(m[1]) for m in re.findall(r"^(flash|pro): .*process group (\d+)", text, re.M)
        }
        results["answers"] = [chat(client, f"#pro hello {i}") for i in range(5)]
        results["answers"] += [chat(client, f"#flash hello {i}") for i in range(5)]
        results["answers"] += [chat(client, "#pro stream please", True), chat(client, "#flash stream", True)]
        results["classified"] = chat(client, "Write a function that merges two sorted lists.")
        metrics = client.get(f"http://127.0.0.1:{PORT}/metrics").text
        results["metrics"] = [
            line for line in metrics.splitlines() if line.startswith("dsv4serve_route_requests")
        ]
    finally:
        t1 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        try:
            results["rc"] = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            results["rc"] = "killed"
        results["stop_s"] = round(time.monotonic() - t1, 1)
        log.close()
    time.sleep(2)
    results["after"] = nvml_used()
    results["vllm_after"] = vllm_pids()
    answers = results["answers"]
    slack = 256 << 20
    results["ok"] = (
        results["rc"] == 0
        and all(a["status"] == 200 for a in answers)
        and [a["route"] for a in answers] == ["pro"] * 5 + ["flash"] * 5 + ["pro", "flash"]
        and all(a["done"] for a in answers[-2:])
        and results["classified"]["status"] == 200
        and all(results["during"][i] - results["baseline"][i] > 1 << 30 for i in results["baseline"])
        and all(abs(results["after"][i] - results["baseline"][i]) < slack for i in results["baseline"])
        and not results["vllm_after"]
    )
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
