"""The router's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

# Seconds: 1, 1.5, 2, 3, 5, 7.5 per decade from 0.1 ms to 1 s.
OVERHEAD_BUCKETS = tuple(round(m * 10.0**e, 6) for e in range(-4, 0) for m in (1, 1.5, 2, 3, 5, 7.5)) + (1.0,)


class Metrics:
    """Counters and histograms of routing decisions, the classifier's cost and upstream failures."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dsv4serve_route_requests",
            "Requests routed, by upstream and reason.",
            ["route", "reason"],
            registry=self.registry,
        )
        self.classifier_seconds = Histogram(
            "dsv4serve_route_classifier_seconds",
            "Wall time of the classifier call to Flash (failed ones included).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.classifier_tokens = Counter(
            "dsv4serve_route_classifier_tokens",
            "Tokens spent on classification, as Flash reported them.",
            ["kind"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "dsv4serve_route_upstream_errors",
            "Failed calls to an upstream: connect, timeout, http_<status>, stream, classifier kinds.",
            ["upstream", "kind"],
            registry=self.registry,
        )
        self.session_events = Counter(
            "dsv4serve_route_session_events",
            "Conversations: evicted (the oldest, beyond sessions.max_sessions).",
            ["event"],
            registry=self.registry,
        )
        self.parallel = Counter(
            "dsv4serve_route_parallel",
            "Parallel mode: Flash's answer kept (simple), or cancelled before any byte left (complex).",
            ["outcome"],
            registry=self.registry,
        )
        # What the router itself adds before the upstream sees the request (classifier excluded), from
        # the complete request body: parsing it, the decision, rewriting the model name. Buckets at most
        # 1.5x apart from 0.1 ms to 1 s, so interpolated p50/p99 are within ~25% both near the goal (2 and
        # 10 ms) and when a loaded event loop delays requests for tens of ms.
        self.proxy_seconds = Histogram(
            "dsv4serve_route_proxy_overhead_seconds",
            "Router time from the complete request to the upstream call, the classifier call excluded.",
            buckets=OVERHEAD_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        import os

        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: the sum of all their files
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
