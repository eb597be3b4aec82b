"""Wall time of `dsv4serve --help` and `dsv4serve profiles list`, next to `vllm --help` when installed.

Each command runs as a fresh process (what a user waits for); the median of several rounds is printed.
BENCH_QUICK=1 runs fewer rounds (CI's smoke check). Nothing here asserts a timing.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

DSV4SERVE = [sys.executable, "-m", "dsv4serve"]
VLLM = [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def time_command(argv: list[str], rounds: int, cwd: str) -> float:
    """Median wall time in seconds of running argv to completion, after one untimed warm-up run."""

    def run() -> None:
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)

    run()  # warm the OS file cache and .pyc files, so rounds measure start-up, not the first disk read
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    rounds, vllm_rounds = (3, 1) if quick else (15, 5)
    # An empty working directory, so ./profiles of wherever this runs does not change what `list` reads.
    with tempfile.TemporaryDirectory() as cwd:
        rows = [
            ("dsv4serve --help", time_command([*DSV4SERVE, "--help"], rounds, cwd), rounds),
            ("dsv4serve profiles list", time_command([*DSV4SERVE, "profiles", "list"], rounds, cwd), rounds),
        ]
        anchor = None
        if importlib.util.find_spec("vllm") is not None:
            anchor = time_command([*VLLM, "--help"], vllm_rounds, cwd)
            rows.append(("vllm --help", anchor, vllm_rounds))
    print(f"{'command':<26} {'median s':>9} {'rounds':>7} {'vs vllm --help':>15}")
    for name, seconds, n in rows:
        ratio = f"{seconds / anchor:.3f}x" if anchor else "n/a"
        print(f"{name:<26} {seconds:>9.3f} {n:>7} {ratio:>15}")
    if anchor is None:
        print("vllm is not installed: no anchor to compare with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
