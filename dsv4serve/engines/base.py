"""The interface every engine gives the flow, and the engines by name.

An engine is what one inference server needs from dsv4serve: the interpreter args that start it, its
argv from a plan's decisions, the flags it folds into a plan or refuses, its installed version and
floor, how its start-up log reads (phases, progress, the hint of an early exit), and the directories
its caches need, the variable its API key travels in, and the argv that starts it. vLLM (engines/vllm/),
llama.cpp's llama-server (engines/llamacpp/, GGUF files) and `transformers serve` (engines/transformers/)
sit side by side; each engine's memory model is planning's (planning/llamacpp.py, transformers.py).
Engines sit below profiles and planning: they read a profile, overrides or a plan by their fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dsv4serve.engines.names import ALIASES, AUTO, ENGINE_CHOICES, ENGINES, PROGRAMS, engine_name

__all__ = [
    "ALIASES",
    "AUTO",
    "ENGINE_CHOICES",
    "ENGINES",
    "PROGRAMS",
    "Engine",
    "LogReader",
    "engine_name",
    "get_engine",
]


class LogReader(Protocol):
    """An engine's output, chunk by chunk, into steps (a log line, a phase, a progress line)."""

    def feed(self, data: bytes, now: float, track: bool = True) -> list: ...

    def close(self, now: float, track: bool = True) -> list: ...


class Engine(Protocol):
    name: str
    main: tuple[str, ...]  # after the interpreter: the module and subcommand that serve (vLLM, Transformers)
    program: tuple[str, ...]  # what a user types before the args: ("vllm", "serve"), ("llama-server",)
    api_key_env: str | None  # the server's own variable for its API key (never on an argv); None: no key

    def launch_argv(self, args: Sequence[str]) -> tuple[str, ...]:
        """The argv that starts the server with these args (an interpreter and module, or a binary)."""

    def serve_args(
        self,
        profile: Any,
        model: str,
        overrides: Any,
        tp: int,
        max_len: int,
        graphs: bool,
        util: float | None,
    ) -> tuple[str, ...]:
        """The server's args after `main`: the model, the profile's settings, the user's extra args."""

    def command(self, args: Sequence[str]) -> tuple[str, ...]:
        """The command a user would type for these args."""

    def arg_problem(self, args: tuple[str, ...]) -> tuple[int, str, str] | None:
        """A profile's extra args that would change a plan behind its back: (index, problem, hint)."""

    def settle(self, profile: Any, overrides: Any) -> tuple[Any, Any]:
        """Args after `--` that the planner decides, folded into the profile and overrides (or refused)."""

    def installed_version(self, paths: Sequence[str] | None = None) -> str | None:
        """The installed release, read without importing the engine."""

    def require_version(self, minimum: str | None, installed: str | None, profile: str) -> None:
        """Refuse (LaunchError, exit 5) a release below the profile's floor, or none at all."""

    def log_reader(self) -> LogReader:
        """A fresh reader of the engine's start-up output."""

    def exit_hint(self, log_tail: str) -> str:
        """The hint for an exit during start-up, from the last lines of its log."""

    def prepare(self, env: Sequence[tuple[str, str]]) -> None:
        """Make what the launch's environment names (cache directories) before it starts."""


def get_engine(name: str = "vllm") -> Engine:
    """The engine of that name (its module is imported only now)."""
    name = ALIASES.get(name, name)
    if name == "vllm":
        from dsv4serve.engines.vllm.engine import ENGINE

        return ENGINE
    if name == "llama.cpp":
        from dsv4serve.engines.llamacpp.engine import ENGINE as LLAMA

        return LLAMA
    if name == "transformers":
        from dsv4serve.engines.transformers.engine import ENGINE as TRANSFORMERS

        return TRANSFORMERS
    from dsv4serve.errors import UsageError

    raise UsageError(f"unknown engine {name!r}", f"use one of: {', '.join(ENGINES)}")
