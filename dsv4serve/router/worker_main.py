"""A spawned router worker (workers.spawn_workers runs this module): read its setup from stdin, bind its own
socket to the router's address (SO_REUSEPORT), serve until stopped."""

from __future__ import annotations

import pickle
import sys


def main() -> None:
    from dsv4serve.router import server

    setup, family, address = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - our parent
    server.run_worker(setup, server.listening_socket(family, address, reuse_port=True))


if __name__ == "__main__":
    main()
