"""cli.main builds only the named command's click command (typer reads every command's options when it
builds one); the root's help, unknown names and groups must still see every command."""

from __future__ import annotations

import pytest

from dsv4serve.cli import app


def _names() -> list[str]:
    return [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]


def test_the_root_help_after_one_command_still_lists_every_command(run_cli):
    first = run_cli("plan", "tiny", "--json")  # builds plan alone, cached for the process
    assert first.exit_code == 0, first.stderr
    for args in (("--help",), ("--help", "plan")):
        shown = run_cli(*args)
        assert shown.exit_code == 0
        listed = [n for n in _names() if f"\n  {n} " in shown.stdout or f"\n  {n}\n" in shown.stdout]
        assert sorted(listed) == sorted(_names()), shown.stdout


def test_a_misspelt_command_gets_clicks_suggestion_from_all_commands(run_cli):
    run_cli("plan", "tiny", "--json")
    result = run_cli("plna", "tiny")
    assert result.exit_code == 2
    assert "No such command 'plna'" in result.stderr and "plan" in result.stderr


@pytest.mark.parametrize("args", [("profiles", "list", "--json"), ("ps", "--json"), ("gpus", "--help")])
def test_each_named_command_or_group_runs_on_its_own(run_cli, args):
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


def test_the_root_help_is_the_full_apps_without_reading_options(run_cli, monkeypatch):
    import typer

    import dsv4serve.cli as cli

    full = typer.main.get_command(app)  # every command with its options, as typer builds it alone
    with full.make_context("dsv4serve", [], resilient_parsing=True) as ctx:
        expected = full.get_help(ctx)
    monkeypatch.setattr(cli, "_built", {})
    shown = run_cli("--help")
    assert shown.exit_code == 0
    assert shown.stdout.strip() == expected.strip()
    listed = cli._command(None)
    assert all(not cmd.params for cmd in listed.commands.values() if not hasattr(cmd, "commands"))
