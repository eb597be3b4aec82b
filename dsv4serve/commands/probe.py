"""`probe`: one real token from a running server within a bounded time (a liveness check that /health
alone is not: /health stays 200 while an engine spins)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from dsv4serve.commands.options import ApiKeyFileOpt, HostOpt, JsonOpt
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT

TargetArg = Annotated[
    Optional[str],  # noqa: UP045
    typer.Argument(help="A detached server's NAME, a URL, or nothing: http://HOST:PORT."),
]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--model", help="The served model's name (default: the server's first in /v1/models)."),
]
TargetPortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="The server's port.")]


def register(app: typer.Typer) -> None:
    @app.command("probe")
    def probe_command(
        target: TargetArg = None,
        port: TargetPortOpt = DEFAULT_PORT,
        host: HostOpt = DEFAULT_HOST,
        model: ModelOpt = None,
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.1, max=3600, help="Seconds to wait for the token.")
        ] = 20.0,
        api_key_file: ApiKeyFileOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Ask a running server for one token; exit 0 when it came in time, 6 when it did not."""
        from dsv4serve.errors import UnhealthyError
        from dsv4serve.render import console, print_json
        from dsv4serve.service import keys
        from dsv4serve.service.target import resolve
        from dsv4serve.serving.health import probe_token

        api_key = keys.read_api_key(api_key_file)
        found = resolve(target, host, port, model, api_key)
        t0 = time.monotonic()
        error = probe_token(found.base_url, found.model, timeout, api_key)
        took = round(time.monotonic() - t0, 3)
        if error is not None:
            raise UnhealthyError(
                f"no token from {found.base_url} (model {found.model}) within {timeout:g} s: {error}",
                "/health may still answer: the engine is stalled or dead; see its log (dsv4serve logs NAME)",
            )
        if as_json:
            print_json(
                {"ok": True, "endpoint": found.base_url + "/v1", "model": found.model, "token_s": took}
            )
            return
        console().print(
            f"ok: one token in {took:.3f} s from {found.base_url}/v1 (model {found.model})", markup=False
        )
