"""The router's ASGI app (Starlette): OpenAI-compatible endpoints that pass answers through as they come."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from typing import Any

from dsv4serve.router import decide
from dsv4serve.router.decide import Decision
from dsv4serve.router.dispatch import ROUTER_MODEL, Request, Router, TooLong

# Not forwarded: connection-level headers (RFC 9110 7.6.1), and those the ASGI server sets itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
HOP_BY_HOP |= {"transfer-encoding", "upgrade", "date", "server"}
# Pro answering one of these is down, overloaded or refuses the router's key: Flash answers instead (the
# client could not fix any of them), and the upstream error counter says which it was.
PRO_FALLBACK_STATUSES = (401, 403, 502, 503, 504)


def create_app(router: Router, api_key: str | None = None):
    """The Starlette app serving /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics;
    with api_key, every endpoint but /health wants it as `Authorization: Bearer KEY`."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def chat(request):
        return await proxy(router, request, "chat", "/v1/chat/completions")

    async def completions(request):
        return await proxy(router, request, "completions", "/v1/completions")

    async def models(request):
        data = [{"id": ROUTER_MODEL, "object": "model", "owned_by": "dsv4serve-route"}]
        for name in ("flash", "pro"):
            model = await router.model(name)
            if model:
                data.append({"id": model, "object": "model", "owned_by": f"dsv4serve-route ({name})"})
        return JSONResponse({"object": "list", "data": data})

    async def health(request):
        # Serving needs Flash (it classifies and is every fallback); Pro down only moves traffic.
        state = {name: await router.probe(name) for name in ("flash", "pro")}
        ok = state["flash"]["up"]
        body = {"status": "ok" if ok else "flash-unavailable", **{k: v["up"] for k, v in state.items()}}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(request):
        content, media_type = router.metrics.render()
        return Response(content, media_type=media_type)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await router.aclose()

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [Middleware(KeyCheck, key=api_key)] if api_key else []
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


class KeyCheck:
    """ASGI middleware: a request without the router's key gets 401 (its body in OpenAI's shape);
    /health stays open for load balancers. The comparison takes the same time however much of the key
    matches; the key is never logged or echoed."""

    OPEN = ("/health",)

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.OPEN and not self._allowed(scope):
            error = {"message": "missing or wrong API key", "type": "authentication_error", "code": 401}
            raw = json.dumps({"error": error}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
            headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": raw})
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")
        return hmac.compare_digest(token.strip(), self.key) and scheme.lower() == b"bearer"


def _route_headers(decision: Decision) -> dict[str, str]:
    headers = {"x-dsv4serve-route": decision.route, "x-dsv4serve-route-reason": decision.reason}
    if decision.classifier_s:
        headers["x-dsv4serve-classifier-ms"] = f"{decision.classifier_s * 1000:.1f}"
    if decision.p_complex is not None:
        headers["x-dsv4serve-p-complex"] = f"{decision.p_complex:.4f}"
    return headers


def _error(status: int, message: str, kind: str, decision: Decision | None = None):
    """An error in OpenAI's shape, with the route headers when a route was chosen."""
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=_route_headers(decision) if decision else None)


async def proxy(router: Router, request: Any, endpoint: str, path: str):
    """Decide, then send the request to the chosen upstream and relay its answer chunk by chunk."""
    raw = await request.body()
    # The router's own time starts with the whole request in hand: how long the client took to upload
    # its body (OpenAI's SDK sends headers and body in separate writes; a busy client sends the body
    # late) is the client's time, and a direct call to vLLM waits for it just the same.
    t0 = time.perf_counter()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(400, "the request body is not a JSON object", "invalid_request_error")
    try:
        req = router.read(body, endpoint, request.headers, len(raw))
        decision = await router.pre_decide(req)
    except ValueError as err:  # a bad x-dsv4serve-tier
        return _error(400, str(err), "invalid_request_error")
    except TooLong as err:
        refused = Decision("flash", decide.CONTEXT, str(err))
        return _error(400, f"{err}: shorten it or lower max_tokens", "invalid_request_error", refused)
    if decision is None and router.profile.mode == "parallel":
        return await _parallel(router, req, path, t0)
    if decision is None:
        decision = await router.classify(req.text)
    return await _send(router, router.settle(req, decision), body, path, t0)


async def _parallel(router: Router, req: Request, path: str, t0: float):
    """Flash's answer and the classification start together. Simple: the answer already running is the
    one the client gets. Complex: Flash's answer is cancelled before any of it was sent (its connection
    closed: vLLM aborts the request) and Pro answers."""
    model = await router.model("flash")
    flash_call = None
    if model is not None:
        own = _own_time(router, t0, 0.0)
        flash_call = asyncio.ensure_future(_call(router, "flash", {**req.body, "model": model}, path))
    decision = router.settle(req, await router.classify(req.text))
    if flash_call is None:
        return await _send(router, decision, req.body, path, t0)
    if decision.route == "pro" and router.pro_known_down():
        decision = decide.to_flash(decision, "pro failed moments ago")
    if decision.route == "flash":
        resp, failure = await flash_call
        if resp is not None:
            router.metrics.parallel.labels("kept").inc()
            return _answer(router, "flash", resp, decision, own)
        return _failed(router, "flash", failure, decision)
    flash_call.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        resp, _ = await flash_call
        if resp is not None:
            resp.close()
    router.metrics.parallel.labels("cancelled").inc()
    return await _send(router, decision, req.body, path, 0.0, own)


def _own_time(router: Router, t0: float, classifier_s: float) -> float:
    """The router's own time before the upstream call, observed once per request."""
    own = time.perf_counter() - t0 - classifier_s
    router.metrics.proxy_seconds.observe(own)
    return own


async def _call(router: Router, name: str, payload: dict, path: str) -> tuple[Any, tuple | None]:
    """One upstream call: (response, None) once its status and headers are in, or (None, failure) with
    failure = (kind, message). A connection the upstream closed before answering is tried once more."""
    import aiohttp

    content = json.dumps(payload).encode()
    headers = {"content-type": "application/json", **router.upstreams[name].headers()}
    metrics = router.metrics
    for attempt in (1, 2):
        try:
            resp = await router.session().request(
                "POST", router.url(name, path), data=content, headers=headers
            )
            return resp, None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            metrics.upstream_errors.labels(name, "connect").inc()
            return None, ("connect", type(err).__name__)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as err:
            # Typically a kept-alive connection the upstream closed (idle timeout) just as it was reused:
            # no answer was started, so one more try on another connection is safe.
            metrics.upstream_errors.labels(name, "protocol").inc()
            if attempt == 2:
                return None, ("protocol", type(err).__name__)
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
            metrics.upstream_errors.labels(name, "timeout").inc()
            return None, ("timeout", "")
        except aiohttp.ClientError as err:
            metrics.upstream_errors.labels(name, "other").inc()
            return None, ("other", type(err).__name__)
    raise AssertionError("unreachable")


def _failed(router: Router, name: str, failure: tuple, decision: Decision):
    """The client's error for an upstream call that got no answer."""
    kind, what = failure
    if kind == "connect":
        return _error(502, f"{name} at {router.upstreams[name].base_url} refused", "upstream_error", decision)
    if kind == "timeout":
        return _error(504, f"{name} did not answer in time", "upstream_timeout", decision)
    return _error(502, f"{name}: {what}", "upstream_error", decision)


async def _send(router: Router, decision: Decision, body: dict, path: str, t0: float, own: float = 0.0):
    metrics = router.metrics
    while True:
        name = decision.route
        model = await router.model(name)
        if name == "pro" and model is None:  # Pro does not answer /v1/models: it is down or starting
            router.mark_pro_down()
            decision = decide.to_flash(decision, f"pro: {router.errors.get('pro')}")
            continue
        if t0:  # once per request: fallbacks and retries are the upstream's cost, not the router's
            own, t0 = _own_time(router, t0, decision.classifier_s), 0.0
        resp, failure = await _call(router, name, {**body, "model": model} if model else body, path)
        if failure is not None:
            if name == "pro" and failure[0] == "connect":
                router.mark_pro_down()
                decision = decide.to_flash(decision, f"pro: {failure[1]}")
                continue
            return _failed(router, name, failure, decision)
        if name == "pro" and resp.status in PRO_FALLBACK_STATUSES:
            resp.close()
            metrics.upstream_errors.labels(name, f"http_{resp.status}").inc()
            router.mark_pro_down()
            decision = decide.to_flash(decision, f"pro answered HTTP {resp.status}")
            continue
        return _answer(router, name, resp, decision, own)


def _answer(router: Router, name: str, resp: Any, decision: Decision, own: float):
    """The upstream's answer as the client's, with the route headers."""
    from starlette.responses import StreamingResponse

    if resp.status >= 400:
        router.metrics.upstream_errors.labels(name, f"http_{resp.status}").inc()
    router.metrics.requests.labels(decision.route, decision.reason).inc()
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
    headers.update(_route_headers(decision))
    headers["x-dsv4serve-proxy-ms"] = f"{own * 1000:.3f}"  # exact, where the histogram has buckets
    return StreamingResponse(_relay(router, name, resp), status_code=resp.status, headers=headers)


async def _relay(router: Router, name: str, resp: Any):
    """The upstream's bytes as they arrive (all that has arrived, in one piece); a stream cut by the
    upstream ends with an error event."""
    import aiohttp

    complete = False
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
        complete = True
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        router.metrics.upstream_errors.labels(name, "stream").inc()
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            raise  # a plain body cut short: the client must see a broken connection, not a short answer
        error = {"message": f"{name} stream broke: {type(err).__name__}", "type": "upstream_error"}
        yield f"data: {json.dumps({'error': error})}\n\n".encode()
    finally:
        # A whole answer leaves its connection for the next request; a cut one (or a client gone) closes it.
        if complete:
            resp.release()
        else:
            resp.close()
