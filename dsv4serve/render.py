"""Output helpers for the CLI: errors on stderr, JSON on stdout, Rich consoles created on use."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_error(message: str, hint: str = "") -> None:
    """One line for what went wrong, one for what to do next; plain text, stderr."""
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.stderr.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def console(stderr: bool = False):
    """A Rich console bound to the current stdout/stderr (so tests capturing them see the output)."""
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=True)
