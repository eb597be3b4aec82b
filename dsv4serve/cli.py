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
    from dsv4serve.commands import download, plan, profiles, route, serve, service

    for module in (profiles, plan, download, serve, service, route):
        module.register(app)
    from dsv4serve.commands import bench, doctor, export, probe

    doctor.register(app)
    export.register(app)
    probe.register(app)
    bench.register(app)


_register()


# Click's exception base (typer >= 0.28 vendors click as typer._click: find it, not `import click`).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


_built: dict = {}


def _command(name: str | None = None):
    """The click command of the app, built once per process (typer builds it on every app() call).
    With NAME, only that command under the root: typer reads every command's options when it builds
    one (~20 ms for all of them), and `dsv4serve plan ...` needs plan's alone."""
    commands = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    key = name if name is not None and (commands or groups) else None  # unknown: click's own message
    if key not in _built:
        import copy

        sub = copy.copy(app)
        if key is not None:
            sub.registered_commands, sub.registered_groups = commands, groups
        else:  # the root's help or click's "did you mean": names and one-line helps, no options
            sub.registered_commands = [_listed(c) for c in app.registered_commands]
            sub.registered_groups = [_listed_group(g) for g in app.registered_groups]
        _built[key] = typer.main.get_command(sub)
    return _built[key]


def _listed(info):
    """A command as the root lists it: its name and help without its options (reading every option of
    every command cost ~40 ms of `dsv4serve --help`)."""
    import copy
    import inspect

    def stub() -> None:
        pass

    stub.__doc__ = inspect.getdoc(info.callback)
    listed = copy.copy(info)
    listed.callback = stub
    return listed


def _listed_group(info):
    import copy

    listed = copy.copy(info)
    listed.typer_instance = copy.copy(info.typer_instance)
    listed.typer_instance.registered_commands = [_listed(c) for c in info.typer_instance.registered_commands]
    listed.typer_instance.registered_groups = []
    return listed


def _click_message(err, ctx) -> str:
    """Click's words, but an unknown option always says what it resembles: "did you mean --hardware?",
    and a value click quotes whole (--port with 5,000 digits) is cut to a readable line."""
    if type(err).__name__ != "NoSuchOption" or ctx is None:
        import re

        return re.sub(r"\S{81,}", lambda m: m.group(0)[:57] + "...", err.format_message())
    import difflib

    known = [opt for param in ctx.command.params for opt in (*param.opts, *param.secondary_opts)]
    close = list(getattr(err, "possibilities", None) or ())
    close = close or difflib.get_close_matches(err.option_name, known)
    guess = f"; did you mean {' or '.join(sorted(close)[:3])}?" if close else ""
    return f"no such option: {err.option_name}{guess}"


def _wants_json(args: list[str]) -> bool:
    """--json among dsv4serve's own arguments (those after `--` go to vLLM)."""
    own = args[: args.index("--")] if "--" in args else args
    return "--json" in own


def _quiet_stdout() -> None:
    """After a closed pipe: stdout to /dev/null, so Python's exit flush does not print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a captured stdout (tests) has no descriptor
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app inside the one place that turns errors into messages and exit codes.

    Every exit code is one of the README's table: 0, 2-5, 128+signal, vLLM's own once it was ready, and
    1 only for a bug of ours. Under --json an error is JSON too."""
    from dsv4serve import render
    from dsv4serve.errors import EXIT_INTERNAL, EXIT_SIGNAL_BASE, EXIT_USAGE

    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("DSV4SERVE_DEBUG") == "1"
    as_json = _wants_json(args)
    render.start()

    def fail(message: str, hint: str, code: int, multiline: bool = False) -> None:
        try:
            if as_json:
                render.print_json_error(message, hint, code)
            else:
                render.print_error(message, hint, multiline=multiline)
        except OSError:  # the reader went away (`| head`): nobody is left to tell
            _quiet_stdout()
        sys.exit(code)

    try:
        # The first word names the command (root options such as --help before it need them all).
        name = args[0] if args and not args[0].startswith("-") else None
        code = _command(name).main(args=args, prog_name="dsv4serve", standalone_mode=False)
    except DsvError as err:
        if debug:
            raise
        fail(err.message, err.hint, err.exit_code, err.multiline)
    except _CLICK_ERROR as err:  # bad flags and values: click's words, our one line and exit code
        if type(err).__name__ == "NoArgsIsHelpError":  # `dsv4serve` alone: the help is the answer
            err.show()
            sys.exit(EXIT_USAGE)
        ctx = getattr(err, "ctx", None)
        hint = f"see `{ctx.command_path if ctx else 'dsv4serve'} --help`"
        if ctx is not None and type(err).__name__ == "NoSuchOption" and "--" not in args:
            from dsv4serve.commands.options import PassThrough

            if isinstance(ctx.command, PassThrough):  # plan/up: the user may have meant a vLLM flag
                hint += f"; a vLLM flag goes after `--`: {ctx.command_path} ... -- {err.option_name}"
        fail(_click_message(err, ctx), hint, EXIT_USAGE)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(EXIT_SIGNAL_BASE + 2)
    except SystemExit as stop:
        # typer turns a closed output pipe (`dsv4serve plan flash | head -1`) into exit 1; it is SIGPIPE.
        if stop.code == 1:
            _quiet_stdout()
        sys.exit(EXIT_SIGNAL_BASE + 13 if stop.code == 1 else stop.code)
    except Exception as err:  # a bug of ours: say so in one line, traceback only on request
        if debug:
            raise
        fail(
            f"internal error: {type(err).__name__}: {err}",
            "run again with DSV4SERVE_DEBUG=1 for the traceback, and report it",
            EXIT_INTERNAL,
        )
    sys.exit(code if isinstance(code, int) else 0)
