"""Where `llama-server` is and which release it is.

Found, in order: $DSV4SERVE_LLAMA_SERVER, `llama-server` on PATH, or the one scripts/build_llama_server.sh
built from a pinned PyPI source package into dsv4serve's cache (`make llama-server`). DeepSeek-V4 is in
llama.cpp since build b9840 (PR #24162); after b10438 upstream numbers releases 0.5.x instead, so any
such version is newer than the floor (shared/facts/engines-v4.md).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ENV = "DSV4SERVE_LLAMA_SERVER"
PIN = "llama-cpp-python-0.3.36"  # scripts/build_llama_server.sh's source package (vendors llama.cpp 0.5.0)
MIN_BUILD = 9840  # b9840: the first build with architecture deepseek4
LAST_NUMBERED_BUILD = 10438  # after it, semantic versions (0.5.x): all of them have V4
BUILD_HINT = "build it once (about 12 min on 2 cores): make llama-server, or set DSV4SERVE_LLAMA_SERVER=/path"
_SEMVER = re.compile(r"version:\s*(\d{1,4})\.(\d{1,4})\.(\d{1,4})")
_BUILD = re.compile(r"version:\s*(\d{1,7})\b(?!\.)")


def cache_root() -> Path:
    """dsv4serve's llama.cpp cache: the built binary and the converter beside it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsv4serve" / "llama.cpp" / PIN


def find_server() -> str | None:
    """The llama-server to run, or None."""
    given = os.environ.get(ENV)
    if given:
        return given if os.access(given, os.X_OK) else None
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path
    built = cache_root() / "bin" / "llama-server"
    return str(built) if os.access(built, os.X_OK) else None


def converter_dir() -> Path | None:
    """The llama.cpp source tree's converter (convert_hf_to_gguf.py, conversion/, gguf-py): beside the
    llama-server in use when the build script made it, else in dsv4serve's cache; None if neither."""
    server = find_server()
    places = [Path(server).resolve().parent.parent / "src"] if server else []
    for src in (*places, cache_root() / "src"):
        if (src / "convert_hf_to_gguf.py").is_file() and (src / "gguf-py").is_dir():
            return src
    return None


def parse_server_version(text: str) -> tuple[str, bool] | None:
    """From `llama-server --version`: (the release as shown, whether it has DeepSeek-V4), or None."""
    semver = _SEMVER.search(text)
    if semver:
        return ".".join(semver.groups()), True
    build = _BUILD.search(text)
    if build:
        number = int(build.group(1))
        return f"b{number}", number >= MIN_BUILD
    return None


def server_version(path: str) -> str | None:
    """`llama-server --version` of that binary (it prints and exits), or None when it cannot tell."""
    import subprocess

    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False, errors="replace"
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout + "\n" + done.stderr)[:4000]
