"""What every export format needs from a plan, in one frozen Deployment, and the `up` argv it runs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dsv4serve.errors import UsageError
from dsv4serve.hardware.select import parse_gpus

# In a container: HF_HOME and XDG_CACHE_HOME point here, so the hub cache is /cache/huggingface/hub and
# dsv4serve's JIT caches and logs are /cache/dsv4serve/{jit,logs}: two mounts keep all of it.
CONTAINER_HF_HOME = "/cache/huggingface"
CONTAINER_CACHE = "/cache"
CONTAINER_DSV4SERVE = "/cache/dsv4serve"
CONTAINER_HOST = "0.0.0.0"  # published by the container runtime; reach it through the port mapping
SHM_SIZE_GIB = 16  # NCCL and vLLM's shared-memory broadcast between TP workers use /dev/shm
# Beyond `up`'s own readiness deadline: planning, the weights check and the stop of a failed start, so
# that `up`'s clear error (exit 5), not the supervisor's timeout, ends a start that takes too long.
START_MARGIN_S = 120
# `up` stops vLLM with SIGTERM, a 15 s grace, then SIGKILL and a 5 s wait (launch.Server.stop).
STOP_TIMEOUT_S = 60
API_KEY_VAR = "DSV4SERVE_API_KEY"
HF_TOKEN_VAR = "HF_TOKEN"


@dataclass(frozen=True)
class Deployment:
    """One served profile as the export formats see it (pure data; built by make_deployment)."""

    profile: str  # as the user named it (a built-in name, or a YAML path)
    name: str  # DNS-1123 label: dsv4serve-<profile>
    served_model: str
    device: str  # cuda | cpu
    gpus: str  # `up --gpus` on a host (systemd): the user's value, else the plan's count
    gpu_count: int  # GPUs per node (0 on the CPU path)
    gpu_ids: tuple[str, ...]  # the user's --gpus list (indices or UUIDs); () for a count
    nodes: int
    strategy: str
    host: str
    port: int
    up_options: tuple[str, ...]  # the user's planning options, passed on to `up` unchanged
    startup_timeout_s: int  # `up`'s readiness deadline (launch.startup_timeout)
    weights_bytes: int
    downloads: bool  # the weights come from the hub: a download step runs before `up`
    source: str  # the export command line, for the header
    # The health watch's stall window (serving/health.py): `up` runs with --on-unhealthy stop, so a
    # stalled server exits 6 and the service manager restarts it; the watchdog and probes allow this long.
    stall_s: int = 0


def make_deployment(
    profile,
    plan,
    *,
    profile_arg: str,
    gpus: str | None,
    host: str,
    port: int,
    up_options: Sequence[str],
    startup_timeout_s: float,
    source: str,
    stall_s: float = 0,
) -> Deployment:
    """A Deployment from a fitting plan (pure). Refuses what an export cannot express (exit 2)."""
    if plan.executor == "ray" and len(plan.nodes) > 1:
        raise UsageError(
            "export: --executor ray needs a Ray cluster started outside dsv4serve",
            "export with --executor mp (the default): every node runs `dsv4serve up`",
        )
    # --gpus's own reading, not str.isdigit(): that takes "²" for a count, and "0," is GPU 0, not 0 GPUs.
    parsed = parse_gpus(gpus)
    ids: tuple[str, ...] = parsed if isinstance(parsed, tuple) else ()
    count = len(plan.gpus) if plan.device == "cuda" else 0
    return Deployment(
        profile=profile_arg,
        name=dns_label("dsv4serve-" + profile.name),
        served_model=_served_name(plan.args) or profile.name,
        device=plan.device,
        gpus=gpus or str(count),
        gpu_count=count,
        gpu_ids=ids,
        nodes=max(1, len(plan.nodes)),
        strategy=plan.strategy,
        host=host,
        port=port,
        up_options=tuple(up_options),
        startup_timeout_s=math.ceil(startup_timeout_s),
        weights_bytes=profile.model.weights_bytes,
        downloads=bool(profile.model.repo),
        source=source,
        stall_s=math.ceil(stall_s),
    )


def _served_name(args: Sequence[str]) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == "--served-model-name":
            return args[i + 1]
    return None


def dns_label(text: str) -> str:
    """A Kubernetes name (RFC 1123 label): lower case, digits and '-', at most 63 characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-") or "dsv4serve"


def up_argv(
    dep: Deployment,
    *,
    gpus: str,
    host: str,
    rank: str | None = None,
    master_addr: str | None = None,
) -> list[str]:
    """`dsv4serve up ...` for one node: the weights are local by then (--no-download), so the start
    window measures vLLM's start alone. rank/master_addr only for a plan of several nodes."""
    argv = ["dsv4serve", "up", dep.profile]
    if dep.device == "cuda":
        argv += ["--gpus", gpus]
    argv += ["--host", host, "--port", str(dep.port), *dep.up_options]
    argv += ["--on-unhealthy", "stop"]  # stalled or grown: exit 6, and the service manager restarts it
    if dep.nodes > 1:
        argv += ["--nodes", str(dep.nodes), "--node-rank", rank or "0", "--master-addr", master_addr or ""]
        argv += ["--strategy", dep.strategy]  # pinned: the nodes must agree on the plan
    if dep.downloads:
        argv.append("--no-download")
    return argv


def download_argv(dep: Deployment) -> list[str]:
    """`dsv4serve download PROFILE`: resumable, checks the disk before the first byte."""
    return ["dsv4serve", "download", dep.profile]


def header(dep: Deployment, comment: str = "#") -> list[str]:
    """The opening comment lines every format shares: how it was made and where secrets come from."""
    return [
        f"{comment} Generated by `{dep.source}`.",
        f"{comment} Serves {dep.profile} ({dep.served_model}) through `dsv4serve up`, which plans,",
        f"{comment} checks the weights, waits until vLLM really answers and stops it cleanly.",
        f"{comment} Secrets are not in this file: {HF_TOKEN_VAR} (gated repos) and {API_KEY_VAR}",
        f"{comment} (the key clients send) come from outside.",
    ]


def dump_yaml(docs: Sequence[dict]) -> str:
    """YAML documents in the given key order (safe_dump: plain data only)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # a list used twice is written twice, not as &id001
            return True

    return "---\n".join(
        yaml.dump(doc, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=4096) for doc in docs
    )
