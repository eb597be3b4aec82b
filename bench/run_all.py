"""Run every bench/bench_*.py in turn (BENCH_QUICK=1: fewer rounds, for CI's smoke check).

Each benchmark prints its own numbers and a ratio against an anchor measured in the same run;
nothing here asserts a timing. A benchmark that crashes fails this run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)])
        print(f"=== {script.name}: exit {rc} in {time.monotonic() - t0:.1f} s ===", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
