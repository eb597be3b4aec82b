"""Download throughput: `dsv4serve download` vs `hf download` of the same repo from the same local hub.

Both CLIs run as separate processes against tests/hubserver.py on 127.0.0.1, each into a fresh empty
cache, alternating which goes first; the ratio is dsv4serve's median throughput over hf's (goal >= 0.95).
BENCH_QUICK=1: a smaller repo and one round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hubserver import HubServer  # noqa: E402
from tests.test_weights import safetensors  # noqa: E402

REPO = "bench/weights"
PATTERNS = ["*.safetensors", "*.json"]


def make_repo(shards: int, shard_bytes: int) -> dict[str, bytes]:
    files = {
        f"model-{i:05d}-of-{shards:05d}.safetensors": safetensors(shard_bytes, 4)
        for i in range(1, shards + 1)
    }
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {}, "weight_map": {f"w{i}": n for i, n in enumerate(files)}}
    ).encode()
    files["config.json"] = b"{}"
    return files


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    shards, shard_bytes, rounds = (4, 48 * 2**20, 3) if quick else (8, 128 * 2**20, 5)
    files = make_repo(shards, shard_bytes)
    total = sum(len(d) for d in files.values())
    hf = str(Path(sys.executable).with_name("hf"))
    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        hub.add_repo(REPO, files)
        profile = Path(tmp, "bench.yaml")
        profile.write_text(
            f"extends: tiny\nname: bench\nmodel:\n  repo: {REPO}\n  allow_patterns: {PATTERNS}\n"
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        base.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
        ours_cmd = [sys.executable, "-m", "dsv4serve", "download", str(profile), "--json"]
        hf_cmd = [hf, "download", REPO, *[a for p in PATTERNS for a in ("--include", p)], "--quiet"]
        times: dict[str, list[float]] = {"dsv4serve": [], "hf": []}
        for r in range(rounds):
            order = [("dsv4serve", ours_cmd), ("hf", hf_cmd)]
            for name, cmd in order if r % 2 == 0 else order[::-1]:
                env = dict(base, HF_HOME=tempfile.mkdtemp(dir=tmp))
                times[name].append(timed(cmd, env))
        print(f"repo: {len(files)} files, {total / 2**20:.0f} MiB; rounds: {rounds}")
        rate = {name: total / statistics.median(t) / 2**20 for name, t in times.items()}
        for name, t in times.items():
            runs = ", ".join(f"{x:.2f}" for x in t)
            print(f"{name:>10}: median {statistics.median(t):.2f} s  {rate[name]:.0f} MiB/s  ({runs})")
        print(f"ratio dsv4serve/hf throughput: {rate['dsv4serve'] / rate['hf']:.3f} (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
