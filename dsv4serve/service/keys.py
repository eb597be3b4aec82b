"""The API key clients must send: from --api-key-file or $DSV4SERVE_API_KEY, to vLLM through its
environment (VLLM_API_KEY), never on an argv, never printed."""

from __future__ import annotations

import dataclasses
import ipaddress
import os

from dsv4serve.errors import UsageError

ENV_NAME = "DSV4SERVE_API_KEY"
VLLM_ENV = "VLLM_API_KEY"  # vLLM's own variable: --api-key without the argv


def read_api_key(path: str | None) -> str | None:
    """The key from the file (its first line), else from $DSV4SERVE_API_KEY, else None."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                key = f.readline().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(
                f"--api-key-file {path}: cannot read it: {getattr(err, 'strerror', None) or err}",
                "give a readable file whose first line is the key",
            ) from None
        if not key:
            raise UsageError(
                f"--api-key-file {path}: the first line is empty", "write the key on its first line"
            )
        return _checked(key, f"--api-key-file {path}")
    key = os.environ.get(ENV_NAME, "").strip()
    return _checked(key, f"${ENV_NAME}") if key else None


def _checked(key: str, where: str) -> str:
    # Sent in an HTTP header: a control character would break (or split) it.
    if not key.isprintable() or " " in key:
        raise UsageError(
            f"{where}: the key holds spaces or control characters", "use a token of visible characters"
        )
    from dsv4serve.redact import register

    register([key])  # masked in whatever is shown, should it ever appear
    return key


def with_key(spec, key: str | None):
    """The launch spec with the key in its engine's environment (vLLM's VLLM_API_KEY, llama-server's
    LLAMA_API_KEY); `transformers serve` takes none, so a key with it is a usage error."""
    if not key:
        return spec
    from dsv4serve.engines.base import get_engine

    env_name = get_engine(spec.engine).api_key_env
    if env_name is None:
        raise UsageError(
            f"{spec.engine} serves without an API key: it cannot check the one given",
            "drop --api-key-file (and $DSV4SERVE_API_KEY) and stay on 127.0.0.1, or use --engine llama.cpp",
        )
    return dataclasses.replace(spec, env={**dict(spec.env), env_name: key})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, key: str | None) -> str | None:
    """A loud line when the API is reachable from other machines and anyone there may use it."""
    if key or is_loopback(host):
        return None
    return (
        f"WARNING: serving on {host} without an API key: anyone who reaches this port can use the model; "
        f"set --api-key-file PATH or ${ENV_NAME}"
    )
