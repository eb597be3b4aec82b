"""`doctor`: is this machine ready to serve a profile? Checks and hints; starts and downloads nothing."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsv4serve.commands.options import HostOpt, JsonOpt, PortOpt, ProfileDirOpt
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT

OptionalProfileArg = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Argument(help="Profile to check against (its GPUs, vLLM version, weights size); optional."),
]


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_command(
        profile: OptionalProfileArg = None,
        host: HostOpt = DEFAULT_HOST,
        port: PortOpt = DEFAULT_PORT,
        profile_dir: ProfileDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Check the driver, GPUs, vLLM, disk, HF token, port and caches; exit 0 when nothing fails."""
        from dsv4serve.doctor.checks import FAIL, WARN, report_to_dict, run_checks
        from dsv4serve.render import console, print_json

        loaded = None
        if profile is not None:
            from dsv4serve.profiles.load import load_profile

            loaded = load_profile(profile, profile_dirs=tuple(profile_dir or ()))
        report = run_checks(loaded, host=host, port=port)
        if as_json:
            print_json(report_to_dict(report))
        else:
            out = console()
            marks = {FAIL: "FAIL", WARN: "warn"}
            for check in report.checks:
                mark = marks.get(check.status, "ok")
                out.print(
                    f"{mark:4}  {check.name:9}  {check.detail}", markup=False, crop=False, overflow="ignore"
                )
                if check.hint:
                    out.print(
                        f"      {'':9}  hint: {check.hint}", markup=False, crop=False, overflow="ignore"
                    )
            fails = sum(c.status == FAIL for c in report.checks)
            warns = sum(c.status == WARN for c in report.checks)
            out.print(f"doctor: {fails} failed, {warns} warning(s)", markup=False)
        if report.exit_code:
            raise typer.Exit(report.exit_code)
