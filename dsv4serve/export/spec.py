"""What every export format needs from a plan, in one frozen Deployment, and the `up` argv it runs.

Every engine exports alike: the plan's engine (and llama.cpp's quant) is pinned on the `up` and
`download` argv, so the service plans what the export planned; GPUs are requested only when the plan
puts work on them; host RAM requests come from the plan's RAM row (llama.cpp, Transformers, vLLM's CPU
build; a vLLM GPU plan has none).
"""

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
MIB = 1024**2
GIB = 1024**3
# The memory limit over the plan's RAM figure (the request): the planner's overheads are estimates, and
# a limit at the estimate itself would turn a small miss into an OOM kill.
MEMORY_HEADROOM = 0.10
MEMORY_HEADROOM_MIN = 1 * GIB
# What each engine is called in the files' comments.
ENGINE_LABELS = {"vllm": "vLLM", "llama.cpp": "llama.cpp", "transformers": "Transformers"}


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
    engine: str = "vllm"  # the plan's engine, pinned on the `up` and `download` argv
    ram_bytes: int = 0  # host RAM the plan needs (its RAM row); 0: the plan has none (vLLM on GPUs)
    probe_model: str | None = None  # the model the liveness probe asks for; None: no token probe
    engine_options: tuple[str, ...] = ()  # --engine X (--quant Q): on both `up` and `download`
    converts: bool = False  # llama.cpp converts the profile's checkpoint to a GGUF at the first start

    @property
    def label(self) -> str:
        return ENGINE_LABELS.get(self.engine, self.engine)

    @property
    def shm(self) -> bool:
        """vLLM's workers share tensors through /dev/shm; llama-server and Transformers do not."""
        return self.engine == "vllm"

    @property
    def memory_request_mib(self) -> int:
        return math.ceil(self.ram_bytes / MIB)

    @property
    def memory_limit_mib(self) -> int:
        headroom = max(MEMORY_HEADROOM_MIN, MEMORY_HEADROOM * self.ram_bytes)
        return math.ceil((self.ram_bytes + headroom) / MIB) if self.ram_bytes else 0


def uses_gpus(plan) -> bool:
    """Whether the plan puts work on GPUs: llama.cpp with -ngl 0 and Transformers on the CPU do not,
    even where GPUs are visible, so an export of such a plan requests none."""
    if plan.device != "cuda" or not plan.gpus:
        return False
    ep = plan.engine_plan
    if plan.engine == "llama.cpp" and ep is not None:
        return ep.gpu_layers > 0
    if plan.engine == "transformers" and ep is not None:
        return ep.device == "cuda"
    return True


def weights_bytes(profile, plan) -> int:
    """The weights the engine loads: llama.cpp's chosen GGUF, else the profile's checkpoint."""
    if plan.engine == "llama.cpp" and plan.engine_plan is not None:
        return plan.engine_plan.weights_bytes
    return profile.model.weights_bytes


def ram_bytes(plan) -> int:
    """The host RAM row of the plan (llama.cpp's 'ram', the CPU path's 'cpu'); 0 when it has none."""
    return sum(row.total for row in plan.memory if row.device in ("ram", "cpu"))


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
    count = len(plan.gpus) if uses_gpus(plan) else 0
    if not count:
        ids = ()
    engine = plan.engine
    pinned = ["--engine", engine]
    weights = weights_bytes(profile, plan)
    downloads = bool(profile.model.repo)
    converts = False
    if engine == "llama.cpp":
        ep = plan.engine_plan
        pinned += ["--quant", ep.quant]  # the quant the plan chose: `up` on another RAM keeps it
        downloads = ep.repo is not None
        converts = ep.repo is None
    served = _served_name(plan.args, "-a" if engine == "llama.cpp" else "--served-model-name")
    probe = _container_model(profile) if engine == "transformers" else served or profile.name
    return Deployment(
        profile=profile_arg,
        name=dns_label("dsv4serve-" + profile.name),
        served_model=served or profile.name,
        device="cuda" if count else "cpu",
        gpus=gpus or str(count),
        gpu_count=count,
        gpu_ids=ids,
        nodes=max(1, len(plan.nodes)),
        strategy=plan.strategy,
        host=host,
        port=port,
        up_options=tuple(up_options),
        startup_timeout_s=math.ceil(startup_timeout_s),
        weights_bytes=weights,
        downloads=downloads,
        source=source,
        stall_s=math.ceil(stall_s),
        engine=engine,
        ram_bytes=ram_bytes(plan),
        probe_model=probe,
        engine_options=tuple(pinned),
        converts=converts,
    )


def _container_model(profile) -> str | None:
    """The model `transformers serve` answers to in a container: the path it loads, which `up` there
    makes under the container's cache. Known for a generated checkpoint; None for a hub snapshot (its
    commit is the download's) or a local path."""
    if not profile.model.generate or profile.model.repo or profile.model.path:
        return None
    from pathlib import Path

    from dsv4serve.weights.generated import checkpoint_dir

    return str(checkpoint_dir(profile.model.generate, Path(CONTAINER_DSV4SERVE) / "checkpoints"))


def _served_name(args: Sequence[str], flag: str = "--served-model-name") -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
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
    argv = ["dsv4serve", "up", dep.profile, *dep.engine_options]
    if dep.gpu_count:
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
    """`dsv4serve download PROFILE --engine X`: resumable, checks the disk before the first byte; for
    llama.cpp only the pinned quant's GGUF files."""
    return ["dsv4serve", "download", dep.profile, *dep.engine_options]


def header(dep: Deployment, comment: str = "#") -> list[str]:
    """The opening comment lines every format shares: how it was made and where secrets come from."""
    return [
        f"{comment} Generated by `{dep.source}`.",
        f"{comment} Serves {dep.profile} ({dep.served_model}) through `dsv4serve up`, which plans,",
        f"{comment} checks the weights, waits until {dep.label} really answers and stops it cleanly.",
        f"{comment} Secrets are not in this file: {HF_TOKEN_VAR} (gated repos) and {API_KEY_VAR}",
        f"{comment} (the key clients send) come from outside.",
    ]


def image_lines(dep: Deployment, image: str, comment: str = "#") -> list[str]:
    """What the container image must hold for this engine (none is published; the exporter cannot
    check it): vLLM, Transformers, or a llama-server outside the /cache volume, which hides the image's
    own cache."""
    if dep.engine == "llama.cpp":
        from dsv4serve.engines.llamacpp.binary import ENV, MIN_BUILD

        lines = [
            f"{comment} Image: {image} must have dsv4serve and llama.cpp's llama-server (b{MIN_BUILD} or",
            f"{comment} later) on PATH or at ${ENV}, outside {CONTAINER_CACHE}: that is a volume, and it",
            f"{comment} hides one built into the image's own cache (~/.cache/dsv4serve/llama.cpp).",
        ]
        if dep.converts:
            lines.append(
                f"{comment} The GGUF is converted at the first start: the image needs the converter the build"
                " script keeps beside the binary (<prefix>/src beside <prefix>/bin/llama-server)."
            )
        return lines
    if dep.engine == "transformers":
        from dsv4serve.engines.transformers.engine import MIN_VERSION

        return [
            f"{comment} Image: {image} must have dsv4serve and transformers[serving] >= {MIN_VERSION} with"
            " torch and accelerate installed."
        ]
    return [f"{comment} Image: {image} must have vLLM and dsv4serve installed."]


def memory_line(dep: Deployment, comment: str = "#") -> list[str]:
    """Where the memory request and limit come from (none when the plan has no RAM figure)."""
    if not dep.ram_bytes:
        return []
    return [
        f"{comment} Memory: {dep.label}'s host RAM in the plan ({dep.memory_request_mib} MiB) is requested;"
        f" the limit leaves {MEMORY_HEADROOM:.0%} (at least {MEMORY_HEADROOM_MIN // GIB} GiB) over it."
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
