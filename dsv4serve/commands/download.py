"""`dsv4serve download`: make a profile's weights local (checked, resumable) without starting vLLM."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsv4serve.commands.engine_options import EngineOpt, QuantOpt, RamOpt
from dsv4serve.commands.options import JsonOpt, ProfileArg, ProfileDirOpt

RevisionOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--revision", help="Branch, tag or commit to download (default: the profile's model.revision)."
    ),
]
DirOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--dir", help="Download into this directory instead of the Hugging Face cache."),
]


def download(
    profile: ProfileArg,
    revision: RevisionOpt = None,
    directory: DirOpt = None,
    json_out: JsonOpt = False,
    profile_dir: ProfileDirOpt = None,
    engine: EngineOpt = None,
    quant: QuantOpt = None,
    ram: RamOpt = None,
) -> None:
    """Download the profile's weights from the hub: disk check first, progress, resume, verify. With
    llama.cpp (--engine, or the profile's serve.engine): one GGUF quant's files only (--quant, else the
    largest that fits this machine, or --ram)."""
    from dsv4serve.preflight.engine_choice import EngineOptions, requested_engine
    from dsv4serve.profiles.load import load_profile
    from dsv4serve.weights.fetch import download_weights

    prof = load_profile(profile, profile_dir or ())
    if revision is not None:
        from dsv4serve.errors import UsageError, oneline
        from dsv4serve.profiles.hub_names import valid_revision

        if not valid_revision(revision):  # it names a file under the cache's refs/: never ../..
            raise UsageError(
                f"--revision {oneline(revision, 60)!r}: not a branch, tag or commit",
                "e.g. --revision main, v1.0 or a 40-character commit",
            )
    wanted = EngineOptions(engine=engine, quant=quant, ram_gib=ram)
    if requested_engine(prof, wanted) == "llama.cpp":
        from dsv4serve.preflight.engine_choice import plan_for_engine
        from dsv4serve.weights.gguf import fetch_gguf

        _, plan = plan_for_engine(profile, wanted, profile_dirs=profile_dir or ())
        gguf = plan.engine_plan
        result = fetch_gguf(
            prof, gguf.quant, gguf.pattern, revision=revision, local_dir=directory, progress=not json_out
        )
    else:
        result = download_weights(prof, revision=revision, local_dir=directory, progress=not json_out)
    if json_out:
        from dsv4serve.render import print_json

        print_json(
            {
                "profile": prof.name,
                "path": str(result.path),
                "source": result.source,
                "repo": result.repo,
                "revision": result.revision,
                "commit": result.commit,
                "files": result.files,
                "total_bytes": result.total_bytes,
                "downloaded_bytes": result.downloaded_bytes,
                "reused_bytes": result.reused_bytes,
            }
        )
        return
    from dsv4serve.render import console

    out = console()
    if result.source == "hub":
        from dsv4serve.hardware.inventory import gib

        out.print(
            f"{result.repo}@{result.commit}: {result.files} files, {gib(result.total_bytes, 2)} "
            f"({gib(result.downloaded_bytes, 2)} downloaded now, {gib(result.reused_bytes, 2)} already there)"
        )
    out.print(f"weights ready: {result.path}")


def register(app: typer.Typer) -> None:
    app.command("download")(download)
