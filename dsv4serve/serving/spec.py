"""What starting one server takes (LaunchSpec) and what the launcher reports while it runs (Event)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dsv4serve.serving.health import WatchConfig


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one server; built by the command from a Plan."""

    argv: tuple[str, ...]
    host: str
    port: int
    served_model_name: str
    startup_timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)  # added to os.environ
    log_path: Path | None = None
    grace_s: float = 15.0  # SIGTERM -> SIGKILL
    probe_interval_s: float = 0.2
    # (GPU uuid or index, bytes used) read before start; after stop NVML must show it released.
    gpu_memory_before: tuple[tuple[str, int], ...] = ()
    # A worker node of a multi-node deployment (vLLM --headless): no API to check or probe; its
    # readiness is the head's, which the `watch` of wait_ready/wait reports (dsv4serve/nodes/).
    headless: bool = False
    engine: str = "vllm"  # engines.base.get_engine: how its start-up log reads
    # The health watch once ready (serving/watch.py) and its policy; None: no watch.
    health: WatchConfig | None = None
    # Traffic warm-up before ready (serving/warm.py): concurrent rounds of these sizes; () = none.
    warm_rounds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Event:
    """What the launcher reports: command, started, log, phase, progress, ready, stopping, stopped,
    warning; once ready, health (the watch's state changed) and restart (the policy restarts)."""

    kind: str
    text: str
    elapsed_s: float = 0.0


Notify = Callable[[Event], None]
# Polled while vLLM starts and runs (every probe interval, and every 0.5 s after ready): it raises to
# stop the server (a lost head or worker node), and returns whether the rest of the world is ready.
Watch = Callable[[], bool]
