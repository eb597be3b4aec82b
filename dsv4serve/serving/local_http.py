"""HTTP to the servers dsv4serve started: straight to them (never through an HTTP(S)_PROXY), keyed."""

from __future__ import annotations

import urllib.request

# Local traffic: a proxy from the environment would see (or refuse) requests meant for 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def json_headers(api_key: str | None) -> dict[str, str]:
    """A JSON request's headers, with the server's key as a bearer token when it has one."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers
