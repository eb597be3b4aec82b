"""`dsv4serve route`: the Flash -> Pro router (thin over dsv4serve.router)."""

from __future__ import annotations

import shlex
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from dsv4serve.commands.options import (
    ApiKeyFileOpt,
    FlashKeyFileOpt,
    FlashModelOpt,
    HardwareOpt,
    HostOpt,
    JsonOpt,
    PortOpt,
    ProfileDirOpt,
    ProKeyFileOpt,
    UrlOpt,
    check_gpus,
)
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT

RouterProfileArg = Annotated[
    str,
    typer.Argument(
        metavar="[ROUTER_PROFILE]",
        help="Router profile: a name (built-in: default) or a YAML path; not a model profile.",
    ),
]


class RouteCommand(TyperCommand):
    """`route` serves; `route eval DATASET` (eval as the first word) evaluates the routing instead."""

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] == "eval":
            from dsv4serve.commands.route_eval import eval_click_command

            return eval_click_command().make_context(
                f"{info_name} eval", list(args[1:]), parent=parent, **extra
            )
        return super().make_context(info_name, args, parent=parent, **extra)


def register(app: typer.Typer) -> None:
    @app.command("route", cls=RouteCommand)
    def route_command(
        router_profile: RouterProfileArg = "default",
        flash: Annotated[
            UrlOpt,
            typer.Option(
                "--flash",
                metavar="URL|PROFILE",
                help="Flash's URL (http://127.0.0.1:8001), or a model profile the router starts itself.",
            ),
        ] = None,
        pro: Annotated[
            UrlOpt,
            typer.Option(
                "--pro",
                metavar="URL|PROFILE",
                help="Pro's URL (http://127.0.0.1:8002), or a model profile the router starts itself.",
            ),
        ] = None,
        flash_model: FlashModelOpt = None,
        pro_model: Annotated[
            UrlOpt,
            typer.Option("--pro-model", metavar="NAME", help="Pro's model name (default: its /v1/models)."),
        ] = None,
        flash_key_file: FlashKeyFileOpt = None,
        pro_key_file: ProKeyFileOpt = None,
        host: HostOpt = DEFAULT_HOST,
        port: PortOpt = DEFAULT_PORT,
        api_key_file: ApiKeyFileOpt = None,
        insecure_no_key: Annotated[
            bool,
            typer.Option(
                "--insecure-no-key",
                help="Serve a non-loopback --host without a client key (anyone may use Pro).",
            ),
        ] = False,
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
        flash_port: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                "--flash-port", min=1, max=65535, help="A started Flash's port (default: --port+1)."
            ),
        ] = None,
        pro_port: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option("--pro-port", min=1, max=65535, help="A started Pro's port (default: --port+2)."),
        ] = None,
        flash_gpus: Annotated[
            UrlOpt,
            typer.Option(
                "--flash-gpus",
                callback=check_gpus,
                help="A started Flash's GPUs: N or 0,1 (default: the fewest its profile allows).",
            ),
        ] = None,
        pro_gpus: Annotated[
            UrlOpt,
            typer.Option(
                "--pro-gpus", callback=check_gpus, help="A started Pro's GPUs (default: all Flash left)."
            ),
        ] = None,
        profile_dir: ProfileDirOpt = None,
        hardware: HardwareOpt = None,
        dry_run: Annotated[
            bool,
            typer.Option("--dry-run", help="Plan the servers the router would start; start nothing."),
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Serve an OpenAI-compatible router: Flash classifies each request, complex ones go to Pro.

        --flash and --pro take a running server's URL, or a model profile: then the router plans both
        before anything starts, starts them on 127.0.0.1 with GPUs of their own, and stops them with
        itself. `dsv4serve route eval DATASET.jsonl --flash URL` measures the routing on labelled
        prompts (see `dsv4serve route eval --help`)."""
        from dsv4serve.errors import UsageError
        from dsv4serve.router import deployment
        from dsv4serve.router.profile import load_router_profile
        from dsv4serve.router.server import require_stack

        require_stack()
        deployment.require_upstreams(flash, pro, serving=explain is None)
        profile = load_router_profile(router_profile)
        given = {"flash": flash, "pro": pro}
        models = {"flash": flash_model, "pro": pro_model}
        key_files = {"flash": flash_key_file, "pro": pro_key_file}
        if explain is not None:
            result = deployment.explain_running(profile, given, models, key_files, explain, tools)
            _print_explanation(profile, result, as_json)
            return
        from dsv4serve.service import keys as client_keys

        api_key = client_keys.read_api_key(api_key_file)
        if not api_key and not client_keys.is_loopback(host) and not insecure_no_key:
            raise UsageError(
                f"--host {host} without a client key: anyone who reaches the port would use Pro",
                f"set --api-key-file FILE or ${client_keys.ENV_NAME}, or pass --insecure-no-key",
            )
        warning = client_keys.exposure_warning(host, api_key)
        if warning:  # --insecure-no-key
            typer.echo(warning, err=True)
        ports = {"flash": flash_port or port + 1, "pro": pro_port or port + 2}
        gpus = {"flash": flash_gpus, "pro": pro_gpus}
        members = deployment.members_to_start(given, ports, gpus, port, hardware, dry_run)
        sock = None
        if not dry_run:  # a busy router port fails here (exit 5), before any server starts
            from dsv4serve.router.server import bind
            from dsv4serve.router.workers import default_workers

            workers = workers or default_workers()
            sock = bind(host, port, reuse_port=workers > 1)
        started = None
        if members:
            started = _start_members(members, profile_dir or (), hardware, dry_run, as_json)
            if started is None:  # --dry-run
                return
        upstreams = deployment.upstreams(given, models, key_files, started)
        from dsv4serve.router.server import Setup

        setup = Setup(profile, upstreams["flash"], upstreams["pro"], api_key)
        serve = lambda: _serve(  # noqa: E731
            setup,
            sock,
            f"http://{host}:{port}",
            (flash_key_file, pro_key_file, api_key_file),
            workers,
            as_json,
        )
        if not members:
            serve()
            return
        from dsv4serve.router.pair import serve_with

        serve_with(started, serve)


def _start_members(members, profile_dirs, hardware: str | None, dry_run: bool, as_json: bool):
    """Plan the members (all before any starts), then start them (router/pair.py) and wait until both
    answer. None for --dry-run (the plans printed). A Ctrl-C before ready: exit 128+signal."""
    import sys

    from dsv4serve.preflight.render import render_plan
    from dsv4serve.router.pair import plan_members, start_members
    from dsv4serve.serving import procs

    def show(m, plan) -> None:
        if not as_json:
            print(f"--- {m.name}: {m.profile} on 127.0.0.1:{m.port}", flush=True)
        render_plan(plan, as_json)

    planned = plan_members(members, profile_dirs, hardware, show if dry_run else None)
    if dry_run:
        return None

    def say(text: str) -> None:  # one write per line
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    try:
        return start_members(planned, profile_dirs, say)
    except procs.Stopped as stop:
        raise typer.Exit(128 + stop.signum) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _print_explanation(profile, result, as_json: bool) -> None:
    from dataclasses import asdict

    from dsv4serve.render import console, print_json

    if as_json:
        print_json({"profile": profile.name, **asdict(result)})
        return
    out = console()
    out.print(f"route: {result.route}  reason: {result.reason}", markup=False)
    if result.classifier_ms:
        tokens = f"{result.prompt_tokens} prompt + {result.completion_tokens} completion tokens"
        out.print(f"classifier: {result.classifier_ms:.1f} ms, {tokens}", markup=False)
    if result.p_complex is not None:
        out.print(f"P(complex): {result.p_complex:.4f}", markup=False)
    if result.detail:
        out.print(f"detail: {result.detail}", markup=False)


def _serve(setup, sock, url: str, key_files, workers: int, as_json: bool) -> None:
    import sys

    from dsv4serve.render import console, print_json
    from dsv4serve.router.dispatch import ROUTER_MODEL
    from dsv4serve.router.server import serve
    from dsv4serve.router.upstreams import key_source
    from dsv4serve.service.keys import ENV_NAME

    profile = setup.profile
    keys = {"flash": key_source("flash", key_files[0]), "pro": key_source("pro", key_files[1])}
    clients = "no key" if not setup.api_key else f"key from {key_files[2] or '$' + ENV_NAME}"

    def on_ready(state: dict) -> None:
        if as_json:
            event = {
                "event": "ready",
                "endpoint": url + "/v1",
                "model": ROUTER_MODEL,
                "profile": profile.name,
                "mode": profile.mode,
                "workers": workers,
                "client_key": bool(setup.api_key),
            }
            print_json({**event, "upstreams": state})
            return
        out = console()
        procs = f"{workers} workers" if workers > 1 else "1 worker"
        out.print(
            f"router {profile.name} ready: {url}/v1  (model: {ROUTER_MODEL}, {profile.mode}, {procs}; "
            f"clients: {clients})",
            markup=False,
        )
        for name, s in state.items():
            then = (
                "its requests go to Flash until it answers"
                if name == "pro"
                else "requests fail until it answers"
            )
            where = f"model {s['model']}" if s["up"] else f"{s['error']}: {then}"
            out.print(f"  {name:5}  {s['url']}  {where}  ({keys[name]})", markup=False)
        body = f'{{"model": "{ROUTER_MODEL}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
        auth = f' -H "Authorization: Bearer ${ENV_NAME}"' if setup.api_key else ""
        curl = (
            f"curl -i {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}"
        )
        out.print(curl, markup=False, crop=False, overflow="ignore")
        out.print(f"metrics: {url}/metrics   Ctrl-C stops the router", markup=False)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    serve(setup, sock, on_ready, workers, say)
