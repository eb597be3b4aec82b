"""What one load level measured, whichever client measured it (ours or `vllm bench serve`)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

FIGURES = (  # (key, label, better when higher)
    ("tokens_per_s", "output tok/s", True),
    ("requests_per_s", "req/s", True),
    ("ttft_mean_ms", "TTFT ms", False),
    ("ttft_p99_ms", "TTFT p99 ms", False),
    ("tpot_mean_ms", "TPOT ms", False),
    ("tpot_p99_ms", "TPOT p99 ms", False),
    ("errors", "errors", False),
    ("acceptance_rate", "spec accept", True),
)


@dataclass(frozen=True)
class Level:
    """One concurrency level: requests sent, failed, and the latency and throughput figures."""

    concurrency: int
    requests: int
    errors: int
    duration_s: float
    output_tokens: int
    tokens_per_s: float
    requests_per_s: float
    ttft_mean_ms: float | None
    ttft_p99_ms: float | None
    tpot_mean_ms: float | None
    acceptance_rate: float | None = None  # speculative decoding: accepted / drafted tokens
    tpot_p99_ms: float | None = None  # runs stored before it was kept read as None

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, interpolated between the two nearest ranks (numpy's default, which
    `vllm bench serve` reports); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q / 100 * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None
