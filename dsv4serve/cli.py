"""The command line: Typer app, the single error boundary, exit codes."""

from __future__ import annotations

import os
import sys

import typer

from dsv4serve import __version__
from dsv4serve.errors import DsvError

app = typer.Typer(
    name="dsv4serve",
    help="Serve DeepSeek-V4 (Pro, Flash) with vLLM: plan, download, start, supervise.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsv4serve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Serve DeepSeek-V4 (Pro, Flash) with vLLM: plan, download, start, supervise."""


def _register() -> None:
    # Command modules import only light modules at top level, so --help stays fast.
    from dsv4serve.commands import download, plan, profiles, route, serve

    for module in (profiles, plan, download, serve, route):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app inside the one place that turns errors into messages and exit codes."""
    debug = os.environ.get("DSV4SERVE_DEBUG") == "1"
    try:
        app(args=argv, prog_name="dsv4serve", standalone_mode=True)
    except DsvError as err:
        if debug:
            raise
        from dsv4serve.render import print_error

        print_error(err.message, err.hint)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # a bug of ours: say so in one line, traceback only on request
        if debug:
            raise
        from dsv4serve.render import print_error

        print_error(
            f"internal error: {type(err).__name__}: {err}",
            "run again with DSV4SERVE_DEBUG=1 for the traceback, and report it",
        )
        sys.exit(1)
