"""Wall time of `dsv4serve plan flash --hardware 2xH200` as a user runs it (a fresh process each time).

Prints the median against `python -c pass` measured in the same run (the interpreter's own start-up),
so the number means something on any machine. Target: under 0.3 s. BENCH_QUICK=1: fewer rounds.
"""

from __future__ import annotations

import os
import sys

from _timing import median_wall

TARGET_S = 0.3


def main() -> int:
    rounds = 3 if os.environ.get("BENCH_QUICK") == "1" else 15
    plan = [sys.executable, "-m", "dsv4serve", "plan", "flash", "--hardware", "2xH200"]
    anchor = [sys.executable, "-c", "pass"]
    help_ = [sys.executable, "-m", "dsv4serve", "--help"]
    base = median_wall(anchor, rounds)
    floor = median_wall(help_, rounds)  # the CLI framework alone (typer, our command modules)
    took = median_wall(plan, rounds)
    verdict = "ok" if took < TARGET_S else "OVER TARGET"
    print(f"dsv4serve --help: median {floor * 1000:.0f} ms (ratio {floor / base:.1f}x)")
    print(
        f"plan flash --hardware 2xH200: median {took * 1000:.0f} ms over {rounds} runs "
        f"(python -c pass: {base * 1000:.0f} ms, ratio {took / base:.1f}x); target < {TARGET_S} s: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
