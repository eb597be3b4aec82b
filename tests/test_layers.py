"""The package's shape: import-linter's contracts in pyproject.toml (the layers, highest first, and no
import circle among any package's modules) hold for the tree as it is, checked by the real tool."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess:
    """import-linter's own CLI on the package under root, with the given contracts."""
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(config), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_and_no_circle_hold():
    result = lint_imports(REPO, REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def _copy_package(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(REPO / "dsv4serve", tmp_path / "dsv4serve", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    "module, line, broken, summary",
    [
        # profiles may not reach up into the planner: a climb, and with planning -> profiles a circle too
        (
            "profiles/types.py",
            "from dsv4serve.planning import plan  # noqa",
            "dsv4serve's layers follow the data flow",
            "0 kept, 2 broken",
        ),
        # a circle inside one package, no layer crossed: serving.ready <-> serving.launch
        (
            "serving/ready.py",
            "from dsv4serve.serving import launch  # noqa",
            "no import circle inside a layer's package",
            "1 kept, 1 broken",
        ),
    ],
)
def test_an_upward_import_or_a_circle_breaks_a_contract(tmp_path, module, line, broken, summary):
    root = _copy_package(tmp_path)
    path = root / "dsv4serve" / module
    path.write_text(path.read_text() + "\n" + textwrap.dedent(line) + "\n")
    result = lint_imports(root, root / "pyproject.toml")
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout
    assert f"Contracts: {summary}." in result.stdout


def test_the_vllm_engine_serves_the_shared_interface():
    """The launch and the plan reach vLLM through engines.base: same argv, log reader and version."""
    from dsv4serve.engines import base
    from dsv4serve.engines.vllm import startup_log, version

    engine = base.get_engine("vllm")
    assert engine.name == "vllm" and engine.main[-1] == "serve"
    assert engine.command(("m", "--seed", "7")) == ("vllm", "serve", "m", "--seed", "7")
    assert engine.installed_version() == version.installed_vllm_version()
    reader = engine.log_reader()
    steps = reader.feed(b"INFO Loading safetensors checkpoint shards\n", now=1.0)
    assert [s.log for s in steps] == ["INFO Loading safetensors checkpoint shards"]
    assert engine.exit_hint("CUDA out of memory") == startup_log.exit_hint("CUDA out of memory")
    assert engine.arg_problem(("--tensor-parallel-size", "2"))[0] == 0  # the planner's flag: refused
    with pytest.raises(Exception, match="unknown engine 'sglang'"):
        base.get_engine("sglang")
