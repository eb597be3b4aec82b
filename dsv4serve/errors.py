"""The one exception family core modules raise; the CLI turns it into a message and an exit code."""

from __future__ import annotations

# Exit codes are part of the user's contract (README, DESIGN.md).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_FIT = 3
EXIT_DOWNLOAD = 4
EXIT_LAUNCH = 5
# Unhealthy while serving (stalled, memory growth): --on-unhealthy stop, or the restarts used up.
EXIT_UNHEALTHY = 6
EXIT_INTERNAL = 1  # a bug of ours (README: report it); never for bad input
# 128 + N: stopped by signal N before vLLM was ready (130 Ctrl-C, 141 output pipe closed, 143 SIGTERM).
EXIT_SIGNAL_BASE = 128


def oneline(text: object, limit: int = 0) -> str:
    """User text for a one-line message: control characters (a newline in a file name) escaped, and
    cut to `limit` characters when limit > 0."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
    return text if not limit or len(text) <= limit else text[: limit - 3] + "..."


class DsvError(Exception):
    """A failure the user can act on: one line of message, one line of hint."""

    exit_code = EXIT_USAGE
    multiline = False  # the message is one line; LaunchError's carries vLLM's last log lines

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class ProfileError(DsvError):
    """A profile that cannot be read, merged or validated."""

    exit_code = EXIT_USAGE


class UsageError(DsvError):
    """A bad flag or flag value."""

    exit_code = EXIT_USAGE


class HardwareError(DsvError):
    """No usable GPUs, NVML missing, or a plan that does not fit."""

    exit_code = EXIT_NO_FIT


class DownloadError(DsvError):
    """The weights could not be made local."""

    exit_code = EXIT_DOWNLOAD


class LaunchError(DsvError):
    """vLLM could not be started, did not become ready, or died."""

    exit_code = EXIT_LAUNCH
    multiline = True


class UnhealthyError(DsvError):
    """A ready server that the health watch found stalled or growing, and stopped (or gave up on)."""

    exit_code = EXIT_UNHEALTHY
