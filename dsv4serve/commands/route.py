"""`dsv4serve route`: the Flash -> Pro router (thin over dsv4serve.router)."""

from __future__ import annotations

import shlex
from typing import Annotated, Optional

import typer

from dsv4serve.options import DEFAULT_HOST, DEFAULT_PORT, HostOpt, JsonOpt, PortOpt

UrlOpt = Optional[str]  # noqa: UP045 - typer needs Optional here
RouterProfileArg = Annotated[
    str,
    typer.Argument(
        metavar="[ROUTER_PROFILE]",
        help="Router profile: a name (built-in: default) or a YAML path; not a model profile.",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("route")
    def route_command(
        router_profile: RouterProfileArg = "default",
        flash: Annotated[
            UrlOpt, typer.Option("--flash", metavar="URL", help="Flash's URL, e.g. http://127.0.0.1:8001.")
        ] = None,
        pro: Annotated[
            UrlOpt, typer.Option("--pro", metavar="URL", help="Pro's URL, e.g. http://127.0.0.1:8002.")
        ] = None,
        flash_model: Annotated[
            UrlOpt,
            typer.Option(
                "--flash-model", metavar="NAME", help="Flash's model name (default: its /v1/models)."
            ),
        ] = None,
        pro_model: Annotated[
            UrlOpt,
            typer.Option("--pro-model", metavar="NAME", help="Pro's model name (default: its /v1/models)."),
        ] = None,
        flash_key_file: Annotated[
            UrlOpt,
            typer.Option(
                "--flash-key-file", help="File holding Flash's API key (else $DSV4SERVE_FLASH_API_KEY)."
            ),
        ] = None,
        pro_key_file: Annotated[
            UrlOpt,
            typer.Option(
                "--pro-key-file",
                metavar="FILE",
                help="File holding Pro's API key (else $DSV4SERVE_PRO_API_KEY).",
            ),
        ] = None,
        host: HostOpt = DEFAULT_HOST,
        port: PortOpt = DEFAULT_PORT,
        explain: Annotated[
            UrlOpt,
            typer.Option("--explain", metavar="PROMPT", help="Print the decision for PROMPT; serve nothing."),
        ] = None,
        tools: Annotated[
            bool, typer.Option("--tools", help="With --explain: the request carries tools.")
        ] = False,
        workers: Annotated[
            Optional[int],  # noqa: UP045 - typer needs Optional here
            typer.Option(
                "--workers",
                min=1,
                max=64,
                help="Router processes sharing the port (default: one per core but one, at most 4).",
            ),
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Serve an OpenAI-compatible router: Flash classifies each request, complex ones go to Pro."""
        from dsv4serve.errors import UsageError
        from dsv4serve.router.profile import load_router_profile
        from dsv4serve.router.server import require_stack
        from dsv4serve.router.upstreams import make_upstream

        require_stack()
        if not flash:
            raise UsageError("--flash URL is required: Flash classifies every request", _PAIR_HINT)
        if explain is None and not pro:
            raise UsageError("--pro URL is required to serve", _PAIR_HINT)
        profile = load_router_profile(router_profile)
        up_flash = make_upstream("flash", flash, flash_model, flash_key_file)
        up_pro = make_upstream("pro", pro, pro_model, pro_key_file) if pro else None
        if explain is not None:
            _explain(profile, up_flash, up_pro, explain, tools, as_json)
            return
        _serve(profile, up_flash, up_pro, host, port, (flash_key_file, pro_key_file), workers, as_json)


_PAIR_HINT = (
    "start the pair first: dsv4serve up flash --port 8001; dsv4serve up pro --port 8002; "
    "then dsv4serve route --flash http://127.0.0.1:8001 --pro http://127.0.0.1:8002"
)


def _explain(profile, flash, pro, prompt: str, tools: bool, as_json: bool) -> None:
    from dataclasses import asdict

    from dsv4serve.render import console, print_json
    from dsv4serve.router.server import explain

    result = explain(profile, flash, pro, prompt, tools)
    if result.flash_model is None:  # the router would answer 502: say so rather than print a route
        from dsv4serve.errors import LaunchError

        raise LaunchError(
            f"flash at {flash.base_url} does not answer /v1/models",
            "start it first, or check --flash and its key",
        )
    if as_json:
        print_json({"profile": profile.name, **asdict(result)})
        return
    out = console()
    out.print(f"route: {result.route}  reason: {result.reason}", markup=False)
    if result.classifier_ms:
        tokens = f"{result.prompt_tokens} prompt + {result.completion_tokens} completion tokens"
        out.print(f"classifier: {result.classifier_ms:.1f} ms, {tokens}", markup=False)
    if result.detail:
        out.print(f"detail: {result.detail}", markup=False)


def _serve(profile, flash, pro, host: str, port: int, key_files, workers: int | None, as_json: bool) -> None:
    import sys

    from dsv4serve.render import console, print_json
    from dsv4serve.router.dispatch import ROUTER_MODEL
    from dsv4serve.router.server import bind, serve
    from dsv4serve.router.upstreams import key_source
    from dsv4serve.router.workers import default_workers

    workers = workers or default_workers()
    sock = bind(host, port, reuse_port=workers > 1)

    url = f"http://{host}:{port}"
    keys = {"flash": key_source("flash", key_files[0]), "pro": key_source("pro", key_files[1])}

    def on_ready(state: dict) -> None:
        if as_json:
            event = {
                "event": "ready",
                "endpoint": url + "/v1",
                "model": ROUTER_MODEL,
                "profile": profile.name,
                "workers": workers,
            }
            print_json({**event, "upstreams": state})
            return
        out = console()
        procs = f"{workers} workers" if workers > 1 else "1 worker"
        out.print(f"router {profile.name} ready: {url}/v1  (model: {ROUTER_MODEL}, {procs})", markup=False)
        for name, s in state.items():
            then = (
                "its requests go to Flash until it answers"
                if name == "pro"
                else "requests fail until it answers"
            )
            where = f"model {s['model']}" if s["up"] else f"{s['error']}: {then}"
            out.print(f"  {name:5}  {s['url']}  {where}  ({keys[name]})", markup=False)
        body = f'{{"model": "{ROUTER_MODEL}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
        curl = f"curl -i {url}/v1/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}"
        out.print(curl, markup=False, crop=False, overflow="ignore")
        out.print(f"metrics: {url}/metrics   Ctrl-C stops the router", markup=False)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    serve(profile, flash, pro, sock, on_ready, workers, say)
