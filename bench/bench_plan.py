"""Wall time of `dsv4serve --help` and `dsv4serve plan flash --hardware 2xH200` as a user runs them (a
fresh process each time).

Prints each median against `python -c pass` measured in the same run (the interpreter's own start-up),
so the numbers mean something on any machine. Target: both under 0.2 s. BENCH_QUICK=1: fewer rounds.
Where the time goes: `python -X importtime -m dsv4serve plan flash --hardware 2xH200`.
"""

from __future__ import annotations

import os
import sys

from _timing import median_wall

TARGET_S = 0.2


def main() -> int:
    rounds = 3 if os.environ.get("BENCH_QUICK") == "1" else 15
    anchor = [sys.executable, "-c", "pass"]
    runs = {
        "dsv4serve --help": [sys.executable, "-m", "dsv4serve", "--help"],
        "plan flash --hardware 2xH200": [
            sys.executable,
            "-m",
            "dsv4serve",
            "plan",
            "flash",
            "--hardware",
            "2xH200",
        ],
    }
    base = median_wall(anchor, rounds)
    print(f"anchor python -c pass: median {base * 1000:.0f} ms over {rounds} runs")
    for name, argv in runs.items():
        took = median_wall(argv, rounds)
        verdict = "ok" if took < TARGET_S else "OVER TARGET"
        print(
            f"{name}: median {took * 1000:.0f} ms, ratio {took / base:.1f}x the anchor; "
            f"target < {TARGET_S} s: {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
