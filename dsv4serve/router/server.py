"""Running the router: bind the port, say where each upstream stands, serve with uvicorn; or explain one
decision without serving."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from dsv4serve.errors import LaunchError, UsageError
from dsv4serve.router import decide
from dsv4serve.router.dispatch import ROUTER_MODEL, Router
from dsv4serve.router.metrics import Metrics
from dsv4serve.router.profile import RouterProfile
from dsv4serve.router.upstreams import Upstream


@dataclass(frozen=True)
class Explanation:
    """One routing decision, as `route --explain` prints it."""

    route: str
    reason: str
    detail: str
    classifier_ms: float
    prompt_tokens: int
    completion_tokens: int
    flash_model: str | None
    pro_model: str | None
    p_complex: float | None = None


def require_stack() -> None:
    """The ASGI stack comes with vLLM; a router-only install may lack it."""
    from importlib.util import find_spec

    # Found, not imported: prometheus_client must be imported after the workers' metrics mode is set.
    modules = ("starlette", "httpx", "aiohttp", "uvicorn", "prometheus_client")
    missing = [m.replace("_", "-") for m in modules if find_spec(m) is None]
    if missing:
        raise UsageError(
            f"`dsv4serve route` needs {', '.join(missing)}",
            f"pip install {' '.join(missing)} (vLLM installs them too)",
        )


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound before anything else so a busy port fails at once (exit 5).
    reuse_port: workers will bind sockets of their own to the same address (SO_REUSEPORT)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(
            f"--host {host}: {err.strerror}", "give an IP address or a resolvable name"
        ) from None
    family, _, _, _, address = infos[0]
    try:
        return listening_socket(family, address, reuse_port)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise LaunchError(
                f"port {port} on {host} is already in use", f"pick another: --port {port + 1}"
            ) from None
        raise LaunchError(f"cannot bind {host}:{port}: {err.strerror}", "check --host and --port") from None


def listening_socket(family: int, address, reuse_port: bool) -> socket.socket:
    """A socket listening on address: the first worker's (bind) and each spawned worker's. With
    SO_REUSEPORT the kernel balances new connections across the group; Linux admits only sockets of the
    same user to it, so no other user's process can take the router's connections."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)  # 100+ clients connect at once under load: they wait, never refused
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Setup:
    """What every worker serves with: the router profile, both upstreams, the key clients must send (never
    in repr), and the conversations' shared database (None: one worker, in its memory)."""

    profile: RouterProfile
    flash: Upstream
    pro: Upstream
    api_key: str | None = field(default=None, repr=False)
    sessions_path: str | None = None


def serve(
    setup: Setup,
    sock: socket.socket,
    on_ready: Callable[[dict], None],
    workers: int = 1,
    say: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT/SIGTERM with `workers` processes on one socket. on_ready gets each upstream's
    state once the first worker has started; say() reports a worker that died."""
    from dsv4serve.router import workers as pool

    with pool.shared_metrics(workers), pool.shared_sessions(workers) as sessions_path:
        setup = dataclasses.replace(setup, sessions_path=sessions_path)
        children = pool.spawn_workers(workers - 1, sock, setup)
        try:
            _run(setup, sock, on_ready, _watch(children, workers, say) if children else None)
        finally:
            pool.stop_workers(children)


def _watch(children: list, total: int, say: Callable[[str], None]):
    """A task for the first worker's loop: says when another worker (a Popen in children) dies; the
    rest keep serving."""
    from dsv4serve.router import workers as pool

    async def watch() -> None:
        while children:
            for pid, code in pool.reap(children):
                left = len(children) + 1
                say(f"router worker {pid} exited with code {code}; {left} of {total} workers serve on")
            await asyncio.sleep(1.0)

    return watch


def run_worker(setup: Setup, sock: socket.socket) -> None:
    """A spawned worker (router/workers.py): serve on its own socket until stopped."""
    _run(setup, sock, None)


def _run(setup: Setup, sock: socket.socket, on_ready: Callable[[dict], None] | None, watch=None) -> None:
    """One worker: its own Router (clients, metrics) and uvicorn loop on the shared socket."""
    import uvicorn

    from dsv4serve.router.app import create_app

    router = Router(setup.profile, setup.flash, setup.pro, Metrics(), setup.sessions_path)
    app = create_app(router, setup.api_key)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_):
        async with inner(app_):
            # aiohttp's import and session now, not in the first request's time (~0.3-0.8 s here).
            router.session()
            if on_ready is not None:
                on_ready({name: await router.probe(name) for name in ("flash", "pro")})
            task = asyncio.get_running_loop().create_task(watch()) if watch else None
            yield
            if task:
                task.cancel()

    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        app,
        log_level="warning",  # our own lines say what matters; uvicorn's access log would double the CPU
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        backlog=2048,
    )
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again under the handlers that were
    # there before it ran. These make that a clean return (exit 0, as `up` after Ctrl-C), not a kill.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stopped(signum)


def explain(
    profile: RouterProfile, flash: Upstream, pro: Upstream | None, prompt: str, tools: bool
) -> Explanation:
    """Decide for one chat request without serving: the classifier call is real, nothing is forwarded.
    Without Pro's URL, the decision is the classification alone."""

    async def run() -> Explanation:
        # A Pro that is never contacted stands in when none is given.
        router = Router(profile, flash, pro or Upstream("pro", "http://127.0.0.1:9"), Metrics())
        try:
            body: dict = {"model": ROUTER_MODEL, "messages": [{"role": "user", "content": prompt}]}
            if tools:
                body["tools"] = [{"type": "function", "function": {"name": "example", "parameters": {}}}]
            decision = await router.decide(body, "chat")
            flash_model = await router.model("flash")
            pro_model = None
            if decision.route == "pro" and pro is not None:  # what would really happen: Pro may be down
                pro_model = await router.model("pro")
                if pro_model is None:
                    decision = decide.to_flash(decision, f"pro: {router.errors.get('pro')}")
            return Explanation(
                decision.route,
                decision.reason,
                decision.detail,
                round(decision.classifier_s * 1000, 1),
                decision.prompt_tokens,
                decision.completion_tokens,
                flash_model,
                pro_model,
                decision.p_complex,
            )
        finally:
            await router.aclose()

    return asyncio.run(run())
