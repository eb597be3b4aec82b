"""The Router: the upstreams, their model names, the classifier call and the decision for a request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dsv4serve.router import decide
from dsv4serve.router.decide import Decision
from dsv4serve.router.metrics import Metrics
from dsv4serve.router.profile import RouterProfile
from dsv4serve.router.sessions import SESSION_HEADER, SessionStore, session_key
from dsv4serve.router.upstreams import Upstream

LOOKUP_TIMEOUT_S = 3.0  # /v1/models and /health of an upstream
ROUTER_MODEL = "auto"  # the model name the router itself serves: "let the router choose"


class TooLong(Exception):
    """Neither model's max_model_len holds the request."""


@dataclass(frozen=True)
class Request:
    """What a decision reads from one request."""

    body: dict
    endpoint: str  # chat | completions
    text: str  # what the classifier judges
    session: str | None  # the conversation's key (None: sessions off, or none to tell)
    tier: str | None  # the client's x-dsv4serve-tier
    tool_result: bool
    size: int  # the body's bytes


class Router:
    """Holds the HTTP clients for both upstreams and decides where each request goes."""

    def __init__(
        self,
        profile: RouterProfile,
        flash: Upstream,
        pro: Upstream,
        metrics: Metrics | None = None,
        sessions_path: str | None = None,
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
        self.limits: dict[str, int] = {}  # each upstream's max_model_len from its /v1/models (0: not told)
        self.limit_retry: dict[str, float] = {}
        s = profile.sessions
        self.sessions = SessionStore(sessions_path, s.idle_s, s.max_sessions) if s.enabled else None

    async def aclose(self) -> None:
        if self.sessions is not None:
            self.sessions.close()
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
                    card = resp.json()["data"][0]
                    limit = card.get("max_model_len")
                    self.limits[name] = limit if isinstance(limit, int) and limit > 0 else 0  # 0: not told
                    return str(card["id"])
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
        self.limits.pop("pro", None)  # or another max_model_len

    def read(
        self, body: dict, endpoint: str, headers: Mapping[str, str] | None = None, size: int = 0
    ) -> Request:
        """What the decision reads from a request; ValueError for a bad x-dsv4serve-tier."""
        headers = headers or {}
        session = None
        if self.sessions is not None:
            session = session_key(body, endpoint, headers.get(SESSION_HEADER))
        return Request(
            body,
            endpoint,
            decide.request_text(body, endpoint),
            session,
            decide.requested_tier(headers.get(decide.TIER_HEADER)),
            decide.is_tool_result(body, endpoint),
            size or len(json.dumps(body)),
        )

    async def decide(self, body: dict, endpoint: str, headers: Mapping[str, str] | None = None) -> Decision:
        """Where a request goes (classify-first): the decision without a classifier call if one applies,
        else Flash's classification; the conversation remembers it."""
        request = self.read(body, endpoint, headers)
        decision = await self.pre_decide(request)
        if decision is None:
            decision = await self.classify(request.text)
        return self.settle(request, decision)

    async def pre_decide(self, request: Request) -> Decision | None:
        """The decision when no classifier call is needed, else None: the context window, the client's
        x-dsv4serve-tier, a pinned model name, the conversation's model, a rule, Pro known down.
        TooLong when neither model holds the request."""
        fits = await self.fitting(request)
        if len(fits) == 1:
            return Decision(fits[0], decide.CONTEXT, f"only {fits[0]}'s max_model_len holds it")
        if request.tier:
            return Decision(request.tier, decide.HEADER)
        requested = request.body.get("model")
        for name in ("pro", "flash"):
            if requested and requested == self.models[name]:
                return Decision(name, "rule:model")
        tier = self._session_tier(request.session)
        if tier == "pro" or (tier == "flash" and request.tool_result):
            return Decision(tier, decide.SESSION)
        rule = decide.matching_rule(self.profile, request.body, request.endpoint, request.text)
        if rule is not None:
            return Decision(rule.route, f"rule:{rule.name}")
        if tier == "flash" and not self.profile.sessions.reclassify:
            return Decision(tier, decide.SESSION)
        if self.pro_known_down():  # no classifier call whose answer could not be followed
            wait = self.profile.timeouts.pro_retry_s
            return Decision("flash", decide.PRO_UNAVAILABLE, f"pro failed less than {wait:g} s ago")
        return None

    def settle(self, request: Request, decision: Decision) -> Decision:
        """The conversation takes the decision's model (it only escalates); fallbacks are not remembered.
        A Flash decision in a Pro conversation (a rule's, say) then answers on Pro, as `session`."""
        remembered = decision.reason in decide.REMEMBERED or decision.reason.startswith("rule:")
        if request.session is None or not remembered or decision.reason == "rule:model":
            return decision
        if decision.reason in (decide.HEADER, decide.CONTEXT) and decision.route == "flash":
            return decision  # the client's or the window's choice for this request, not a downgrade
        try:
            tier, evicted = self.sessions.escalate(request.session, decision.route)
        except sqlite3.Error as err:  # sessions help; a request never fails for them
            self.metrics.upstream_errors.labels("sessions", type(err).__name__).inc()
            return decision
        if evicted:
            self.metrics.session_events.labels("evicted").inc(evicted)
        if tier != decision.route:
            return dataclasses.replace(decision, route=tier, reason=decide.SESSION)
        return decision

    def _session_tier(self, key: str | None) -> str | None:
        if key is None:
            return None
        try:
            return self.sessions.get(key)
        except sqlite3.Error as err:
            self.metrics.upstream_errors.labels("sessions", type(err).__name__).inc()
            return None

    async def fitting(self, request: Request) -> tuple[str, ...]:
        """The models whose max_model_len holds the request's prompt and max_tokens: both unless it may be
        long (then Flash's /tokenize counts it). TooLong when neither does."""
        limits = {name: await self.limit(name) for name in ("flash", "pro")}
        known = [v for v in limits.values() if v]
        want = decide.output_tokens(request.body)
        if not known or decide.token_bound(request.size) + want <= min(known):
            return ("flash", "pro")
        count = await self.count_tokens(request)
        if count is None:  # no count: the upstream judges (vLLM answers 400)
            return ("flash", "pro")
        fits = tuple(n for n in ("flash", "pro") if limits[n] is None or count + want <= limits[n])
        if not fits:
            held = ", ".join(f"{n} {limits[n]}" for n in ("flash", "pro"))
            raise TooLong(f"the request needs {count} prompt + {want} output tokens; max_model_len: {held}")
        return fits

    async def limit(self, name: str) -> int | None:
        """The upstream's max_model_len from its /v1/models (looked up at most every pro_retry_s)."""
        if name not in self.limits and time.monotonic() >= self.limit_retry.get(name, 0.0):
            self.limit_retry[name] = time.monotonic() + self.profile.timeouts.pro_retry_s
            await self.lookup(name)
        return self.limits.get(name) or None

    async def count_tokens(self, request: Request) -> int | None:
        """The request's prompt tokens as Flash's /tokenize counts them (Flash and Pro share a tokenizer)."""
        import httpx

        model = await self.model("flash")
        body = decide.tokenize_body(request.body, request.endpoint, model or "")
        if body is None:
            prompt = request.body.get("prompt")  # token ids count themselves
            ids = isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            return len(prompt) if ids else None
        try:
            resp = await self.client.post(
                self.url("flash", "/tokenize"),
                json=body,
                headers=self.upstreams["flash"].headers(),
                timeout=LOOKUP_TIMEOUT_S,
            )
            count = resp.json().get("count") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            count = None
        return count if isinstance(count, int) else None

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
        p = decide.complex_probability(answer, level)
        detail = ""
        if c.threshold is not None and p is not None:
            level = "complex" if p >= c.threshold else "simple"
            detail = f"P(complex) {p:.3f} {'>=' if level == 'complex' else '<'} threshold {c.threshold:g}"
        route = "pro" if level == "complex" else "flash"
        return Decision(route, decide.CLASSIFIED[level], detail, 0.0, *tokens, p_complex=p)
