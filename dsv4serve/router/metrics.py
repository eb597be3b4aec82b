"""The router's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations


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
        # What the router itself adds before the upstream sees the request (classifier excluded):
        # reading and parsing the body, the decision, rewriting the model name.
        self.proxy_seconds = Histogram(
            "dsv4serve_route_proxy_overhead_seconds",
            "Router time before the upstream request is sent, the classifier call excluded.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
