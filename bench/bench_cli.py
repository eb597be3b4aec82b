"""Wall time of `dsv4serve --help` and `dsv4serve profiles list`, next to `vllm --help` when installed.

Each command runs as a fresh process (what a user waits for); the median of several rounds is printed.
BENCH_QUICK=1 runs fewer rounds (CI's smoke check). Nothing here asserts a timing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

from _timing import median_wall

DSV4SERVE = [sys.executable, "-m", "dsv4serve"]
VLLM = [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    rounds, vllm_rounds = (3, 1) if quick else (15, 5)
    # An empty working directory, so ./profiles of wherever this runs does not change what `list` reads.
    with tempfile.TemporaryDirectory() as cwd:
        rows = [
            (" ".join(["dsv4serve", *args]), median_wall([*DSV4SERVE, *args], rounds, cwd=cwd), rounds)
            for args in (["--help"], ["profiles", "list"])
        ]
        anchor = None
        if importlib.util.find_spec("vllm") is not None:
            anchor = median_wall([*VLLM, "--help"], vllm_rounds, cwd=cwd)
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
