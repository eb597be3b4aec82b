"""`dsv4serve profiles list|show|validate`: thin commands over dsv4serve.profiles.load."""

from __future__ import annotations

from typing import Annotated

import typer

from dsv4serve.commands.options import JsonOpt, ProfileArg, ProfileDirOpt
from dsv4serve.errors import EXIT_USAGE

FilesArg = Annotated[
    list[str], typer.Argument(metavar="FILE", help="Profile YAML files (or names) to check.")
]


def register(app: typer.Typer) -> None:
    """Add the `profiles` command group to the app."""
    group = typer.Typer(
        name="profiles",
        help="List, show and validate profiles.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    group.command("list")(list_command)
    group.command("show")(show_command)
    group.command("validate")(validate_command)
    app.add_typer(group, name="profiles")


def list_command(json: JsonOpt = False, profile_dir: ProfileDirOpt = None) -> None:
    """List profiles on the search path, where each came from, and which files shadow others."""
    from dataclasses import asdict

    from dsv4serve.errors import oneline
    from dsv4serve.profiles.load import list_profiles, search_path
    from dsv4serve.render import console, print_json

    entries = list_profiles(profile_dir or ())
    if json:
        dirs = [{"dir": str(d), "origin": o} for d, o in search_path(profile_dir or ())]
        print_json({"profiles": [asdict(e) for e in entries], "search_path": dirs})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "variant", "draft", "min vLLM", "size", "origin", "path / description"):
        table.add_column(column, overflow="fold")  # a narrow terminal folds a path, never cuts it
    for e in entries:
        if e.shadowed_by:
            table.add_row(
                f"{e.name} (shadowed)",
                *[""] * 4,
                e.origin,
                f"{oneline(e.path)}: shadowed by {oneline(e.shadowed_by)}",
                style="dim",
            )
        elif e.error:
            table.add_row(
                e.name, *[""] * 4, e.origin, f"{oneline(e.path)}: invalid: {oneline(e.error)}", style="red"
            )
        else:
            table.add_row(
                e.name,
                oneline(e.variant) or "-",
                oneline(e.draft) or "-",
                oneline(e.min_vllm_version) or "-",
                _size(e.weights_bytes, e.weights_exact),
                e.origin,
                f"{oneline(e.path)}: {oneline(e.description)}",
            )
    console().print(table)


def _size(weights: int, exact: bool) -> str:
    """148.66 GiB, or ~805.6 GiB? for a stand-in (the exact size comes from the hub at download)."""
    from dsv4serve.hardware.inventory import gib

    return gib(weights, 2) if exact else f"~{gib(weights, 1)}?"


def show_command(name: ProfileArg, json: JsonOpt = False, profile_dir: ProfileDirOpt = None) -> None:
    """Show a profile after `extends` is merged and every field is validated."""
    from dsv4serve.errors import oneline
    from dsv4serve.profiles.load import load_profile, profile_to_dict
    from dsv4serve.redact import masked_profile
    from dsv4serve.render import console, print_json

    profile = load_profile(name, profile_dir or ())
    data = masked_profile(profile_to_dict(profile))
    if json:
        print_json(data)
        return
    import yaml

    out = console()
    chain = " -> ".join((profile.name, *profile.extends))
    # user text: control characters (a terminal escape in a description) shown, not obeyed
    out.print(f"{profile.name}: {oneline(profile.description)}")
    out.print(f"from {oneline(profile.source)} ({profile.origin}); extends chain: {chain}")
    out.print(_facts_line(profile))
    body = {k: data[k] for k in ("cpu_ok", "model", "serve", "hardware")}
    out.print(yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=1 << 20).rstrip())


def _facts_line(profile) -> str:
    """The checkpoint facts a reader checks first: size, depth, context."""
    from dsv4serve.hardware.inventory import gib

    m = profile.model
    return (
        f"{_count(m.total_params)} total / {_count(m.active_params)} active parameters, {m.layers} layers, "
        f"{m.attention_heads} attention heads, {m.max_context:,} max context, "
        f"weights {gib(m.weights_bytes, 2)}, enforce_eager {str(profile.serve.enforce_eager).lower()}"
    )


def _count(n: int) -> str:
    """284000000000 -> 284B, 1600000000000 -> 1.6T."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.4g}{unit}"
    return str(n)


def validate_command(files: FilesArg, json: JsonOpt = False, profile_dir: ProfileDirOpt = None) -> None:
    """Check profile files; exit 0 when all are valid, 2 otherwise."""
    from dsv4serve.errors import DsvError, oneline
    from dsv4serve.profiles.load import load_profile
    from dsv4serve.render import console, print_json

    results = []
    for file in files:
        try:
            profile = load_profile(file, profile_dir or ())
            results.append({"file": file, "ok": True, "name": profile.name, "error": "", "hint": ""})
        except DsvError as err:  # one bad file must not stop the batch
            # Every FAIL line starts with the file the user named, then where the problem is.
            shown = oneline(file)
            message = err.message if err.message.startswith(shown) else f"{shown}: {err.message}"
            results.append({"file": file, "ok": False, "name": "", "error": message, "hint": err.hint})
    valid = all(r["ok"] for r in results)
    if json:
        print_json({"valid": valid, "results": results})
    else:
        out = console()
        for r in results:
            if r["ok"]:
                out.print(f"OK    {oneline(r['file'])} ({r['name']})")
            else:
                out.print(f"FAIL  {oneline(r['error'])}")
                out.print(f"      hint: {oneline(r['hint'])}")
        out.print(f"{sum(r['ok'] for r in results)} of {len(results)} valid")
    if not valid:
        raise typer.Exit(EXIT_USAGE)
