"""Start-up phases of engines other than vLLM, read with vLLM's line splitter and progress bars; and
the flags after `--` each refuses because its plan decides them.

Each engine names its phases as (name, pattern) in start-up order; the reader moves forward only, as
vLLM's does (engines/vllm/startup_log.py), and keeps its tqdm handling ("Loading weights: 45/89")."""

from __future__ import annotations

import re

from dsv4serve.engines.vllm.startup_log import OutputReader, StartupTracker

Phases = tuple[tuple[str, re.Pattern[str]], ...]
Hints = tuple[tuple[re.Pattern[str], str], ...]


class PhaseTracker(StartupTracker):
    """StartupTracker over an engine's own phases."""

    def __init__(self, phases: Phases) -> None:
        super().__init__()
        self.phases = phases


def phase_reader(phases: Phases) -> OutputReader:
    """A fresh reader of an engine's output over these phases."""
    return OutputReader(PhaseTracker(phases))


def first_hint(log_tail: str, hints: Hints, default: str) -> str:
    """The hint of the first pattern found in the last log lines, else the default."""
    return next((hint for pattern, hint in hints if pattern.search(log_tail)), default)


def decided_problem(args, decided: dict[str, str]) -> tuple[int, str, str] | None:
    """The first arg that names a flag the plan decides, or a second `--`: (index, problem, hint)."""
    for i, arg in enumerate(args):
        if arg == "--":  # the engine would read what follows as positionals, or refuse `--` itself
            return i, "a second --", "write -- once, before the args for the engine"
        flag = arg.split("=", 1)[0]
        if flag in decided:
            return i, f"{flag} is decided by the plan", f"use {decided[flag]} instead"
    return None


def refuse_decided(args, decided: dict[str, str], who: str) -> None:
    """UsageError (exit 2) for a flag after `--` that the plan decides."""
    problem = decided_problem(args, decided)
    if problem:
        from dsv4serve.errors import UsageError

        raise UsageError(f"after --: {problem[1]} ({who})", problem[2])
