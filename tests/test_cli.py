"""The CLI's single error boundary: exit codes, one-line messages, no tracebacks for bad input."""

from __future__ import annotations

import json

import pytest

from dsv4serve import __version__


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dsv4serve {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ("up", "tiny", "--port", "99999"),
        ("up", "tiny", "--port", "0"),
        ("plan", "tiny", "--max-model-len", "lots"),
        ("no-such-command",),
        ("profiles", "show"),
    ],
)
def test_bad_flags_exit_2_without_traceback(run_cli, args):
    result = run_cli(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr


def test_up_with_declared_hardware_only_plans(run_cli):
    result = run_cli("up", "flash", "--hardware", "2xH200")
    assert result.exit_code == 2
    assert "only plans" in result.stderr and "--dry-run" in result.stderr
    dry = run_cli("up", "flash", "--hardware", "2xH200", "--dry-run", "--cuda-graphs")
    assert dry.exit_code == 0
    assert "--tensor-parallel-size 2" in dry.stdout and "--enforce-eager" not in dry.stdout


def test_an_unexpected_error_is_one_line_unless_debugging(run_cli, monkeypatch):
    import dsv4serve.profiles.load as profiles

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(profiles, "load_profile", broken)
    result = run_cli("profiles", "show", "flash")
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "DSV4SERVE_DEBUG=1" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.setenv("DSV4SERVE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        run_cli("profiles", "show", "flash")


@pytest.mark.parametrize("extra", [["--served-model-name", "mine"], ["--served-model-name=mine"]])
def test_up_talks_to_the_served_name_vllm_will_use(extra):
    """Args after `--` come last and win in vLLM; the readiness probe and curl line must use them too."""
    from dsv4serve.serving.prepare import prepare_launch

    _, spec = prepare_launch("tiny", extra_args=extra)
    assert spec.served_model_name == "mine"
    assert spec.argv[-len(extra) :] == tuple(extra)


def _every_command() -> list[list[str]]:
    """Every command path of the app (groups' subcommands included), as built for the user."""
    import typer

    from dsv4serve.cli import app

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])
            else:
                yield [*prefix, name]

    return list(walk(typer.main.get_command(app), []))


def test_every_command_is_listed():
    paths = {" ".join(p) for p in _every_command()}
    assert {"plan", "up", "smoke", "download", "profiles list", "route", "export", "stop"} <= paths


@pytest.mark.parametrize("path", _every_command(), ids=" ".join)
def test_a_typo_in_an_option_fails_at_once_on_every_command(run_cli, path):
    result = run_cli(*path, "--bogus-flag")
    said = result.stdout + result.stderr
    assert result.exit_code == 2, said
    assert "no such option: --bogus-flag" in said and "Traceback" not in said


def test_a_near_miss_says_what_it_resembles(run_cli):
    result = run_cli("plan", "tiny", "--hardwar", "1xH200")
    assert result.exit_code == 2
    assert "did you mean --hardware?" in result.stderr
    assert "a vLLM flag goes after `--`" in result.stderr  # plan passes args after -- to vLLM


@pytest.mark.parametrize("command", ["plan", "up"])
def test_only_args_after_the_double_dash_reach_vllm(run_cli, command):
    extra = ["--dry-run"] if command == "up" else []
    assert run_cli(command, "tiny", *extra, "stray").exit_code == 2  # a stray word before --
    result = run_cli(command, "tiny", *extra, "--json", "--", "--seed", "7", "--bogus-flag")
    assert result.exit_code == 0, result.stdout
    argv = json.loads(result.stdout)["argv"]
    assert argv[-3:] == ["--seed", "7", "--bogus-flag"]
