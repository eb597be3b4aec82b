"""The one exception family core modules raise; the CLI turns it into a message and an exit code."""

from __future__ import annotations

# Exit codes are part of the user's contract (README, DESIGN.md).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_FIT = 3
EXIT_DOWNLOAD = 4
EXIT_LAUNCH = 5


class DsvError(Exception):
    """A failure the user can act on: one line of message, one line of hint."""

    exit_code = EXIT_USAGE

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
