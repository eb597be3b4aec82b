"""The detached server on a GPU (issue 13): what the CPU tests cannot show, NVML's part.

    source .gpuw/w2/device_setup.sh && PYTHONPATH=$PWD python3 scripts/gpu_service.py --out $OUT

`up tiny -d --gpus 1` with an API key, `ps --json` (memory_per_gpu from NVML must be > 0 on the GPU the
record names), 401 without the key, `stop` (exit 0, gpu_memory_held empty), NVML back to the baseline;
then `up -d` again, SIGKILL of the supervisor, `stop` of the stale record, NVML back again. Raw output
and results.json land in --out. About 2 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_validate import nvml_used  # noqa: E402 - one copy

CLI = [sys.executable, "-m", "dsv4serve"]
KEY = "sk-gpu-service-check-0123456789"
PORT = 8131


def run(out: Path, name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    (out / f"{name}.txt").write_text(
        f"$ {' '.join(args)}\nrc={res.returncode}\n{res.stdout}\n--- stderr\n{res.stderr}"
    )
    return res


def unauthenticated() -> int:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{PORT}/v1/models", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    key_file = out / "key"
    key_file.write_text(KEY + "\n")
    results: dict = {"baseline": nvml_used()}
    up = run(
        out, "up1", "up", "tiny", "-d", "--gpus", "1", "--port", str(PORT), "--api-key-file", str(key_file)
    )
    results["up1_rc"] = up.returncode
    ps = json.loads(run(out, "ps1", "ps", "--json").stdout)["servers"]
    results["ps1"] = ps
    results["unauthenticated"] = unauthenticated()
    stop = run(out, "stop1", "stop", "tiny", "--json")
    results["stop1_rc"] = stop.returncode
    results["stop1"] = json.loads(stop.stdout) if stop.stdout.strip() else None
    time.sleep(2)
    results["after1"] = nvml_used()
    up = run(
        out, "up2", "up", "tiny", "-d", "--gpus", "1", "--port", str(PORT), "--api-key-file", str(key_file)
    )
    results["up2_rc"] = up.returncode
    record = json.loads(run(out, "ps2", "ps", "--json").stdout)["servers"][0]
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    time.sleep(10)
    results["ps3"] = json.loads(run(out, "ps3", "ps", "--json").stdout)["servers"]
    stop = run(out, "stop2", "stop", "--all", "--json")
    results["stop2_rc"] = stop.returncode
    results["after2"] = nvml_used()
    ok = (
        results["up1_rc"] == 0
        and ps
        and any(v > 0 for v in ps[0]["memory_per_gpu"].values())
        and results["unauthenticated"] == 401
        and results["stop1_rc"] == 0
        and results["up2_rc"] == 0
        and results["ps3"][0]["state"] == "failed"
        and results["stop2_rc"] == 0
    )
    results["ok"] = bool(ok)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
