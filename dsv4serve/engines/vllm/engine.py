"""vLLM as an engine (engines.base.Engine): the pieces of engines/vllm/ behind the shared interface."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsv4serve.engines.names import PROGRAMS


@dataclass(frozen=True)
class VllmEngine:
    name: str = "vllm"
    # vLLM's entry point, run by the interpreter that runs dsv4serve (the CPU build, through the
    # dist-info shim scripts/install.sh adds, and the GPU bundle both provide it).
    main: tuple[str, ...] = ("-m", "vllm.entrypoints.cli.main", "serve")
    program: tuple[str, ...] = PROGRAMS["vllm"]
    api_key_env: str | None = "VLLM_API_KEY"

    def launch_argv(self, args: Sequence[str]) -> tuple[str, ...]:
        return (sys.executable, *self.main, *args)

    def serve_args(self, profile: Any, model: str, overrides: Any, tp: int, max_len: int, graphs: bool, util):
        from dsv4serve.engines.vllm.argv import vllm_args

        return vllm_args(profile, model, overrides, tp, max_len, graphs, util)

    def command(self, args: Sequence[str]) -> tuple[str, ...]:
        return (*self.program, *args)

    def arg_problem(self, args: tuple[str, ...]):
        from dsv4serve.engines.vllm.flags import profile_arg_problem

        return profile_arg_problem(args)

    def settle(self, profile: Any, overrides: Any):
        from dsv4serve.engines.vllm.flags import settle_overrides

        return settle_overrides(profile, overrides)

    def installed_version(self, paths: Sequence[str] | None = None) -> str | None:
        from dsv4serve.engines.vllm.version import installed_vllm_version

        return installed_vllm_version(paths)

    def require_version(self, minimum: str | None, installed: str | None, profile: str) -> None:
        from dsv4serve.engines.vllm.version import require_vllm

        require_vllm(minimum, installed, profile)

    def log_reader(self):
        from dsv4serve.engines.vllm.startup_log import OutputReader

        return OutputReader()

    def exit_hint(self, log_tail: str) -> str:
        from dsv4serve.engines.vllm.startup_log import exit_hint

        return exit_hint(log_tail)

    def prepare(self, env: Sequence[tuple[str, str]]) -> None:
        from dsv4serve.engines.vllm.jit_cache import ensure_dirs

        ensure_dirs(env)


ENGINE = VllmEngine()
