"""The router's ASGI app (Starlette): OpenAI-compatible endpoints that pass answers through as they come."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from dsv4serve.router import decide
from dsv4serve.router.decide import Decision
from dsv4serve.router.dispatch import ROUTER_MODEL, Router

# Not forwarded: connection-level headers (RFC 9110 7.6.1), and those the ASGI server sets itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
HOP_BY_HOP |= {"transfer-encoding", "upgrade", "date", "server"}
# Pro answering one of these is down, overloaded or refuses the router's key: Flash answers instead (the
# client could not fix any of them), and the upstream error counter says which it was.
PRO_FALLBACK_STATUSES = (401, 403, 502, 503, 504)


def create_app(router: Router):
    """The Starlette app serving /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics."""
    from starlette.applications import Starlette
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
    return Starlette(routes=routes, lifespan=lifespan)


def _route_headers(decision: Decision) -> dict[str, str]:
    headers = {"x-dsv4serve-route": decision.route, "x-dsv4serve-route-reason": decision.reason}
    if decision.classifier_s:
        headers["x-dsv4serve-classifier-ms"] = f"{decision.classifier_s * 1000:.1f}"
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
    decision = await router.decide(body, endpoint)
    return await _send(router, decision, body, path, t0)


async def _send(router: Router, decision: Decision, body: dict, path: str, t0: float):
    import aiohttp
    from starlette.responses import StreamingResponse

    metrics = router.metrics
    retried, own = False, 0.0
    while True:
        name = decision.route
        model = await router.model(name)
        if name == "pro" and model is None:  # Pro does not answer /v1/models: it is down or starting
            router.mark_pro_down()
            decision = decide.to_flash(decision, f"pro: {router.errors.get('pro')}")
            continue
        payload = {**body, "model": model} if model else body
        content = json.dumps(payload).encode()
        headers = {"content-type": "application/json", **router.upstreams[name].headers()}
        if t0:  # once per request: fallbacks and retries are the upstream's cost, not the router's
            own = time.perf_counter() - t0 - decision.classifier_s
            metrics.proxy_seconds.observe(own)
            t0 = 0.0
        try:
            resp = await router.session().request(
                "POST", router.url(name, path), data=content, headers=headers
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            metrics.upstream_errors.labels(name, "connect").inc()
            if name == "pro":
                router.mark_pro_down()
                decision = decide.to_flash(decision, f"pro: {type(err).__name__}")
                continue
            return _error(
                502, f"flash at {router.upstreams[name].base_url} refused", "upstream_error", decision
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as err:
            # Typically a kept-alive connection the upstream closed (idle timeout) just as it was reused:
            # no answer was started, so one more try on another connection is safe.
            metrics.upstream_errors.labels(name, "protocol").inc()
            if not retried:
                retried = True
                continue
            return _error(502, f"{name}: {type(err).__name__}", "upstream_error", decision)
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
            metrics.upstream_errors.labels(name, "timeout").inc()
            return _error(504, f"{name} did not answer in time", "upstream_timeout", decision)
        except aiohttp.ClientError as err:
            metrics.upstream_errors.labels(name, "other").inc()
            return _error(502, f"{name}: {type(err).__name__}", "upstream_error", decision)
        if name == "pro" and resp.status in PRO_FALLBACK_STATUSES:
            resp.close()
            metrics.upstream_errors.labels(name, f"http_{resp.status}").inc()
            router.mark_pro_down()
            decision = decide.to_flash(decision, f"pro answered HTTP {resp.status}")
            continue
        if resp.status >= 400:
            metrics.upstream_errors.labels(name, f"http_{resp.status}").inc()
        metrics.requests.labels(decision.route, decision.reason).inc()
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
