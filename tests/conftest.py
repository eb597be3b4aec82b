"""Shared fixtures: an isolated HOME/cache per test, and a way to run the CLI in-process."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from dsv4serve.engines.vllm.jit_cache import CACHE_VARS, WARMUP_VAR

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Point HOME, XDG dirs and the HF cache at a temp dir; drop variables that change behaviour."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    for var in (
        "DSV4SERVE_PROFILE_PATH",
        "DSV4SERVE_DEBUG",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "CUDA_VISIBLE_DEVICES",
        # the JIT cache variables: a user's value wins in plans and exports, and importing vLLM (torch's
        # inductor) in a test sets TORCHINDUCTOR_CACHE_DIR in os.environ for every test after it
        *(var for var, _ in CACHE_VARS),
        WARMUP_VAR,
    ):
        monkeypatch.delenv(var, raising=False)
    # ./profiles of the current directory is on the search path: run tests from an empty directory.
    work = home / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@dataclasses.dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run `dsv4serve ARGS...` in-process through cli.main (the real error boundary)."""

    def run(*args: str) -> CliResult:
        from dsv4serve.cli import main

        capsys.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def dsv4serve_cmd():
    """argv prefix to run the CLI as a separate process (for signal and timing tests)."""
    return [sys.executable, "-m", "dsv4serve"]
