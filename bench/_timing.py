"""Wall time of a command as a user waits for it: a fresh process per run, the median of the rounds."""

from __future__ import annotations

import os
import statistics
import subprocess
import time

# What a user runs has compiled .pyc files (pip writes them at install, Python on first import); with
# PYTHONDONTWRITEBYTECODE set (as in some sandboxes) every run would recompile dsv4serve (~25 ms here).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def median_wall(argv: list[str], rounds: int, *, cwd: str | None = None) -> float:
    """Median wall time in seconds of running argv to completion, after one untimed warm-up run."""

    def run() -> None:
        subprocess.run(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)

    run()  # warm the OS file cache and .pyc files, so rounds measure start-up, not the first disk read
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
