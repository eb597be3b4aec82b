"""The Router: the upstreams, their model names, the classifier call and the decision for a request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

from dsv4serve.router import decide
from dsv4serve.router.decide import Decision
from dsv4serve.router.metrics import Metrics
from dsv4serve.router.profile import RouterProfile
from dsv4serve.router.upstreams import Upstream

LOOKUP_TIMEOUT_S = 3.0  # /v1/models and /health of an upstream
ROUTER_MODEL = "auto"  # the model name the router itself serves: "let the router choose"


class Router:
    """Holds the HTTP clients for both upstreams and decides where each request goes."""

    def __init__(
        self, profile: RouterProfile, flash: Upstream, pro: Upstream, metrics: Metrics | None = None
    ):
        import httpx

        self.profile = profile
        self.upstreams = {"flash": flash, "pro": pro}
        self.models: dict[str, str | None] = {"flash": flash.model, "pro": pro.model}
        self.metrics = metrics or Metrics()
        t = profile.timeouts
        # Lookups and classifier calls (one short call each): httpx. trust_env=False: local upstreams, an
        # HTTP(S)_PROXY in the environment must not capture them. No TLS context for plain-http upstreams
        # (building one costs ~0.15 s).
        https = any(u.base_url.startswith("https:") for u in (flash, pro))
        self.client = httpx.AsyncClient(
            verify=httpx.create_ssl_context() if https else False,
            timeout=httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.read_s, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=4),
            trust_env=False,
        )
        self._session: Any = None  # the proxied streams' aiohttp session, made in the event loop
        self.pro_down_until = 0.0
        self.errors: dict[str, str] = {}  # the last failed lookup of each upstream

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()

    def session(self):
        """The aiohttp session that carries proxied requests and relays their answers.

        Not httpx: its pure-Python HTTP/1.1 parser (h11) and pool scans cost ~6x aiohttp's CPU per stream
        (0.3 vs 0.05 s per 100 streams of 17 chunks), and on a busy core that CPU is every stream's queue.
        No connection limit: the router must not queue what the upstream would batch (100+ streams).
        auto_decompress off: the bytes pass through as the upstream sent them, with its headers."""
        import aiohttp

        if self._session is None:
            t = self.profile.timeouts
            self._session = aiohttp.ClientSession(
                # Idle connections dropped after 4 s, before vLLM's uvicorn drops them (5 s): a reused
                # connection is then rarely one the upstream is closing (the retry covers the rest).
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
                timeout=aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_read=t.read_s),
                auto_decompress=False,
            )
        return self._session

    def url(self, name: str, path: str) -> str:
        return self.upstreams[name].base_url + path

    async def lookup(self, name: str) -> str | None:
        """The first model of the upstream's /v1/models, or None (and why, in self.errors[name])."""
        import httpx

        upstream = self.upstreams[name]
        try:
            resp = await self.client.get(
                self.url(name, "/v1/models"), headers=upstream.headers(), timeout=LOOKUP_TIMEOUT_S
            )
        except httpx.HTTPError as err:
            error, kind = f"no answer from /v1/models ({type(err).__name__})", "models_unreachable"
        else:
            if resp.status_code == 200:
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    return str(resp.json()["data"][0]["id"])
                error, kind = "/v1/models names no model", "models_bad_answer"
            else:
                hint = ": check its key" if resp.status_code in (401, 403) else ""
                error, kind = (
                    f"HTTP {resp.status_code} from /v1/models{hint}",
                    f"models_http_{resp.status_code}",
                )
        self.metrics.upstream_errors.labels(name, kind).inc()
        self.errors[name] = error
        return None

    async def model(self, name: str) -> str | None:
        """The upstream's served model name: given, or looked up once and kept."""
        if self.models[name] is None:
            self.models[name] = await self.lookup(name)
        return self.models[name]

    async def probe(self, name: str) -> dict[str, Any]:
        """Whether an upstream answers /v1/models now, and its model: for start-up lines and /health."""
        found = await self.lookup(name)  # asked again each time: an upstream may have restarted
        model = self.upstreams[name].model or found
        self.models[name] = model
        error = None if found else self.errors[name]
        return {"url": self.upstreams[name].base_url, "model": model, "up": found is not None, "error": error}

    def pro_known_down(self) -> bool:
        return time.monotonic() < self.pro_down_until

    def mark_pro_down(self) -> None:
        self.pro_down_until = time.monotonic() + self.profile.timeouts.pro_retry_s
        self.models["pro"] = self.upstreams["pro"].model  # a restarted Pro may serve another name

    async def decide(self, body: dict, endpoint: str) -> Decision:
        """Where a request goes: a pinned model name, a rule, or Flash's classification."""
        requested = body.get("model")
        for name in ("pro", "flash"):
            if requested and requested == self.models[name]:
                return Decision(name, "rule:model")
        text = decide.request_text(body, endpoint)
        rule = decide.matching_rule(self.profile, body, endpoint, text)
        if rule is not None:
            return Decision(rule.route, f"rule:{rule.name}")
        if self.pro_known_down():  # no classifier call whose answer could not be followed
            wait = self.profile.timeouts.pro_retry_s
            return Decision("flash", decide.PRO_UNAVAILABLE, f"pro failed less than {wait:g} s ago")
        return await self.classify(text)

    async def classify(self, text: str) -> Decision:
        """Ask Flash for the level with structured output; every failure falls back to Flash."""
        t0 = time.perf_counter()
        decision = await self._classify(text)
        elapsed = time.perf_counter() - t0
        self.metrics.classifier_seconds.observe(elapsed)
        self.metrics.classifier_tokens.labels("prompt").inc(decision.prompt_tokens)
        self.metrics.classifier_tokens.labels("completion").inc(decision.completion_tokens)
        if decision.reason in (decide.TIMEOUT, decide.CLASSIFIER_ERROR, decide.PARSE_ERROR):
            self.metrics.upstream_errors.labels("flash", f"classifier_{decision.reason}").inc()
        return dataclasses.replace(decision, classifier_s=elapsed)

    async def _classify(self, text: str) -> Decision:
        import httpx

        c = self.profile.classifier
        model = await self.model("flash")
        if model is None:
            return Decision("flash", decide.CLASSIFIER_ERROR, f"flash: {self.errors.get('flash')}")
        body = decide.classifier_body(c, model, text)
        headers = self.upstreams["flash"].headers()
        call = self.client.post(self.url("flash", "/v1/chat/completions"), json=body, headers=headers)
        try:
            resp = await asyncio.wait_for(call, timeout=c.timeout_s)
        except asyncio.TimeoutError:
            return Decision("flash", decide.TIMEOUT, f"no answer within {c.timeout_s:g} s")
        except httpx.HTTPError as err:
            return Decision("flash", decide.CLASSIFIER_ERROR, f"{type(err).__name__}")
        if resp.status_code != 200:
            return Decision("flash", decide.CLASSIFIER_ERROR, f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            answer = resp.json()
        except ValueError:
            return Decision("flash", decide.PARSE_ERROR, f"not JSON: {resp.text[:200]!r}")
        tokens = decide.usage(answer)  # spent whether or not the answer parses
        try:
            level = decide.parse_level(c.method, answer)
        except decide.ParseFailure as err:
            return Decision("flash", decide.PARSE_ERROR, str(err), 0.0, *tokens)
        route = "pro" if level == "complex" else "flash"
        return Decision(route, decide.CLASSIFIED[level], "", 0.0, *tokens)
