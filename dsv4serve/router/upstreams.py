"""The two upstreams (Flash, Pro): base URL, served model name, API key from a file or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dsv4serve.errors import UsageError

KEY_ENV = {"flash": "DSV4SERVE_FLASH_API_KEY", "pro": "DSV4SERVE_PRO_API_KEY"}


@dataclass(frozen=True)
class Upstream:
    """One OpenAI-compatible server the router sends to. The key never appears in repr or logs."""

    name: str  # flash | pro
    base_url: str  # scheme://host:port[/prefix], without /v1
    model: str | None = None  # served model name; None = read from /v1/models on first use
    api_key: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def base_url(name: str, url: str) -> str:
    """http://host:port, with or without a trailing /v1, as the base the router appends /v1/... to."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--{name} {url!r} is not an http(s) URL",
            f"e.g. --{name} http://127.0.0.1:8001 (the address `dsv4serve up` printed)",
        )
    path = parts.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    return f"{parts.scheme}://{parts.netloc}{path}"


def read_key(name: str, key_file: str | None) -> str | None:
    """The API key for an upstream: from --NAME-key-file, else $DSV4SERVE_NAME_API_KEY, else none."""
    if key_file:
        try:
            key = Path(key_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise UsageError(
                f"--{name}-key-file {key_file}: cannot read: {reason}", "check the path"
            ) from None
        if not key or any(c.isspace() for c in key):
            raise UsageError(
                f"--{name}-key-file {key_file}: not one API key",
                "write the key alone on one line (its content is never printed)",
            )
        return key
    return os.environ.get(KEY_ENV[name]) or None


def make_upstream(name: str, url: str, model: str | None, key_file: str | None) -> Upstream:
    return Upstream(name, base_url(name, url), model or None, read_key(name, key_file))


def key_source(name: str, key_file: str | None) -> str:
    """Where an upstream's key comes from, for the start-up lines (never the key itself)."""
    if key_file:
        return f"key from {key_file}"
    return f"key from ${KEY_ENV[name]}" if os.environ.get(KEY_ENV[name]) else "no key"
