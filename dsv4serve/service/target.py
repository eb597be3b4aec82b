"""A running server named the way a user names it: a detached server's NAME, a URL, or a local port
(`probe` and `bench` measure servers dsv4serve did not start too)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dsv4serve.errors import LaunchError, UsageError, oneline


@dataclass(frozen=True)
class Target:
    base_url: str  # without /v1
    model: str
    name: str = ""  # the detached server's, when named so
    plan_digest: str = ""
    gpus: tuple[str, ...] = ()


def resolve(target: str | None, host: str, port: int, model: str | None, api_key: str | None) -> Target:
    """NAME (a detached server: its endpoint and model), URL, or http://HOST:PORT; the model the
    server serves unless given (its /v1/models)."""
    from dsv4serve.serving.procs import connect_host

    name = digest = ""
    gpus: tuple[str, ...] = ()
    if target is None:
        address = connect_host(host)
        base = f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
    elif target.startswith(("http://", "https://")):
        base = target.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
    else:
        from dsv4serve.service import state

        record = state.require(target)
        base = record.endpoint[: -len("/v1")]
        model = model or record.model
        name, digest, gpus = record.name, record.plan_digest, record.gpus
    return Target(base, model or served_model(base, api_key), name, digest, gpus)


def served_model(base_url: str, api_key: str | None) -> str:
    """The first model /v1/models lists."""
    from dsv4serve.serving.health import get_text

    status, text = get_text(base_url + "/v1/models", 10.0, api_key)
    if status != 200:
        why = f"HTTP {status}" if status else text
        raise LaunchError(
            f"no OpenAI-compatible server answers at {oneline(base_url, 200)} ({why})",
            "is it running? `dsv4serve ps` lists the detached servers; name the model with --model",
        )
    try:
        return str(json.loads(text)["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise UsageError(
            f"{oneline(base_url, 200)}/v1/models lists no model", "name the model with --model"
        ) from None
