"""When vLLM counts as ready, and how long `up` waits for it (launch.Server.wait_ready's rules).

Ready: /health answers 200 and a one-token completion succeeds (a keyed server gets its key). The wait:
a deadline sized from the weights, held while vLLM reports progress, and told to a service manager as
it moves (sd_notify EXTEND_TIMEOUT_USEC), so systemd's start timeout never ends a start `up` still waits
for. Readiness traffic goes straight to the local server, never through an HTTP(S)_PROXY.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable

from dsv4serve.errors import LaunchError
from dsv4serve.serving import sd_notify
from dsv4serve.serving.local_http import OPENER, json_headers
from dsv4serve.serving.spec import LaunchSpec

# A cold DeepSeek-V4 start compiles kernels for many minutes before it answers: on one H200 the DeepGEMM
# warmup alone ran 1,131 kernels at ~2.2 a second (docs/validation.md). While vLLM keeps reporting such
# progress the readiness deadline waits; once progress stalls this long, the deadline applies again.
PROGRESS_GRACE_S = 180.0
# Past the grace, `up` still probes once (<= 3 s past the deadline) and stops vLLM (3 s grace, SIGKILL,
# 5 s waits) before it exits 5: an extension covers the grace plus this, so `up` has the last word.
EXTEND_MARGIN_S = 60.0
# One datagram per this many seconds at most: vLLM reports progress up to several times a second.
EXTEND_EVERY_S = 10.0


def startup_timeout(serve_timeout_s: int, weights_bytes: int, override: float | None = None) -> float:
    """Readiness deadline: --timeout, else the profile's, else sized from the weights (~400 MB/s)."""
    if override:
        return float(override)
    if serve_timeout_s > 0:
        return float(serve_timeout_s)
    return 300.0 + weights_bytes / 400e6


def past_deadline(now: float, deadline: float, progress_at: float) -> bool:
    """`up` gives up waiting: past the deadline, and no progress reported for PROGRESS_GRACE_S."""
    return now >= deadline and now - progress_at >= PROGRESS_GRACE_S


def extension_s() -> float:
    """How long one EXTEND_TIMEOUT_USEC lets systemd wait: until `up` itself would give up, and more."""
    return PROGRESS_GRACE_S + EXTEND_MARGIN_S


class StartExtension:
    """Keeps a Type=notify unit's start-up timeout behind `up`'s own deadline while vLLM makes progress.

    systemd moves its start timer to at least now + EXTEND_TIMEOUT_USEC on each message (never earlier;
    it fires only once TimeoutStartSec has passed too). Each progress report gets a message sent at or
    after it, so the timer stays >= last progress + extension_s(), past `up`'s verdict at last progress
    + PROGRESS_GRACE_S. Without $NOTIFY_SOCKET nothing is sent."""

    def __init__(self, send: Callable[[str], object] = sd_notify.notify) -> None:
        self._send = send
        self._sent_at = float("-inf")

    def update(self, now: float, progress_at: float) -> bool:
        """Send an extension when progress came after the last one and EXTEND_EVERY_S have passed."""
        if progress_at <= self._sent_at or now - self._sent_at < EXTEND_EVERY_S:
            return False
        self._sent_at = now
        self._send(f"EXTEND_TIMEOUT_USEC={int(extension_s() * 1e6)}")
        return True


def api_key(spec: LaunchSpec) -> str | None:
    """The key vLLM will require: its --api-key (last one wins), else VLLM_API_KEY in its environment."""
    key = None
    for i, arg in enumerate(spec.argv):
        if arg.replace("_", "-") == "--api-key" and i + 1 < len(spec.argv):
            key = spec.argv[i + 1]
        elif arg.replace("_", "-").startswith("--api-key="):
            key = arg.partition("=")[2]
    name = "LLAMA_API_KEY" if spec.engine == "llama.cpp" else "VLLM_API_KEY"  # the engine's own variable
    return key or spec.env.get(name) or os.environ.get(name) or None


def http_status(url: str) -> int | None:
    """The HTTP status of a GET (None: no answer)."""
    try:
        with OPENER.open(url, timeout=2.0) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return None


def one_token(base_url: str, spec: LaunchSpec, timeout_s: float) -> bool:
    """A one-token completion succeeds; a 4xx (a request vLLM will never accept) is a LaunchError."""
    body = json.dumps({"model": spec.served_model_name, "prompt": "ready?", "max_tokens": 1})
    headers = json_headers(api_key(spec))  # a keyed vLLM answers 401 without it: the start would fail
    req = urllib.request.Request(base_url + "/v1/completions", data=body.encode(), headers=headers)
    try:
        with OPENER.open(req, timeout=min(timeout_s, 60.0)) as resp:
            return bool(json.loads(resp.read()).get("choices"))
    except urllib.error.HTTPError as err:
        if 400 <= err.code < 500:  # waiting longer cannot help
            detail = err.read().decode("utf-8", errors="replace")[:500]
            raise LaunchError(
                f"vLLM answered the readiness completion with HTTP {err.code}: {detail}",
                f"check serve.served_model_name ({spec.served_model_name!r})",
            ) from err
        return False
    except (OSError, ValueError):
        return False
