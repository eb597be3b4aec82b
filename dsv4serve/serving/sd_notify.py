"""systemd's readiness protocol: one datagram, READY=1, to $NOTIFY_SOCKET (sd_notify(3)).

`up` sends it once the server is ready, so a Type=notify unit (`dsv4serve export systemd`) starts its
dependents only then. Before that, EXTEND_TIMEOUT_USEC= while vLLM reports progress
(launch_ready.StartExtension), so the unit's TimeoutStartSec waits as long as `up`'s own deadline does.
Without $NOTIFY_SOCKET (not under systemd) nothing happens.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1\\nSTATUS=...") to the service manager; True when it was sent.

    Never raises: a manager that went away must not stop a server that is ready."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":  # a path, or '@' for the abstract namespace (vsock: no)
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        return True
    except OSError:
        return False


def ready(status: str = "") -> bool:
    """READY=1, with a STATUS= line systemctl status shows."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
