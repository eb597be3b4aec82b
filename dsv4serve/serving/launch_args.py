"""Small facts of a launch every engine's preparation shares: its log file, a flag's value in its args."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path


def log_path(profile: str) -> Path:
    """A fresh log file under the user cache dir: $XDG_CACHE_HOME/dsv4serve/logs/PROFILE-TIME.log."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(base) / "dsv4serve" / "logs" / f"{profile}-{stamp}-{os.getpid()}.log"


def arg_value(args: Sequence[str], flag: str) -> str | None:
    """The value vLLM will use for FLAG: its last occurrence (args after `--` come last and win)."""
    value = None
    for i, arg in enumerate(args):
        if arg == "--":  # argparse: what follows is positional (the planner refuses it anyway)
            break
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value
