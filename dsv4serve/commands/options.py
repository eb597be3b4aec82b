"""Option definitions shared by several commands (one definition of --gpus, --hardware, ...)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperCommand


class PassThrough(TyperCommand):
    """A command whose args after `--` go to the engine (ctx.args) and only those: an unknown option or a
    stray word before `--` is a usage error at once (click's "No such option", with "Did you mean")."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        super().parse_args(ctx, args[:cut])
        ctx.args = list(args[cut + 1 :])
        return ctx.args


ProfileArg = Annotated[
    str, typer.Argument(help="Profile name (see `dsv4serve profiles list`) or a YAML path.")
]
ProfileDirOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--profile-dir", help="Extra directory searched first for profiles (repeatable)."),
]


def check_gpus(param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:  # noqa: UP045
    """--gpus syntax, at parse time: a malformed value is a usage error before any GPU is read. Other
    options of the same syntax (route's --flash-gpus) are named as the user wrote them."""
    from dsv4serve.errors import UsageError
    from dsv4serve.hardware.select import parse_gpus

    try:
        parse_gpus(value)
    except UsageError as err:
        flag = param.opts[0] if param.opts else "--gpus"
        if flag == "--gpus":
            raise
        raise UsageError(err.message.replace("--gpus", flag), err.hint.replace("--gpus", flag)) from None
    return value


GpusOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--gpus",
        callback=check_gpus,
        help="N (the N visible GPUs with most free memory) or a list: 0,1 or GPU UUIDs.",
    ),
]
HardwareOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--hardware",
        help="Plan for declared GPUs instead of reading NVML: 2xH200, 8xH100-80GB, 2x48GiB@8.9.",
    ),
]
MaxModelLenOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--max-model-len", help="Context length to serve (default: the profile's, lowered to fit)."),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address to bind. Default 127.0.0.1 (local only).")]
PortOpt = Annotated[
    int, typer.Option("--port", min=1, max=65535, help="Port for the OpenAI-compatible server.")
]
CudaGraphsOpt = Annotated[
    Optional[bool],  # noqa: UP045 - None means "the profile's setting"
    typer.Option("--cuda-graphs/--enforce-eager", help="CUDA graphs on or off (default: the profile's)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
WarmupOpt = Annotated[
    Optional[str],  # noqa: UP045 - None means "the profile's, else relax"
    typer.Option(
        "--warmup",
        help="DeepGEMM warmup at start (VLLM_DEEP_GEMM_WARMUP): relax (default), full or skip; "
        "the plan notes the trade-off.",
    ),
]
TrafficWarmupOpt = Annotated[
    Optional[bool],  # noqa: UP045 - None means "on for DeepSeek-V4 on GPUs"
    typer.Option(
        "--traffic-warmup/--no-traffic-warmup",
        help="Before ready, serve rounds of 1, 8 and 64 concurrent requests so no request waits on kernel "
        "compilation after ready (default: on for DeepSeek-V4 on GPUs).",
    ),
]

VllmVersionOpt = Annotated[
    Optional[str],  # noqa: UP045 - None means "the installed vLLM's"
    typer.Option(
        "--vllm-version",
        help="Plan for this vLLM release (0.26 to 0.33: its KV layout, start-up check, defaults); "
        "default: the installed one.",
    ),
]

SpecOpt = Annotated[
    Optional[str],  # noqa: UP045 - None means "the profile's, else off"
    typer.Option(
        "--spec",
        help="Speculative decoding: off, mtp or dspark (the draft the checkpoint carries); planned: its "
        "weights and KV cache count only when on. Default: the profile's, else off.",
    ),
]
SpecTokensOpt = Annotated[
    Optional[int],  # noqa: UP045 - None means "the draft's default"
    typer.Option(
        "--spec-tokens",
        help="Draft tokens per step (default: the recipes': MTP 1 on Hopper, else 2; DSpark the "
        "checkpoint's dspark_block_size).",
    ),
]

# `up` and `smoke`: detaching, naming a detached server, output, the API key
DetachOpt = Annotated[
    bool,
    typer.Option(
        "--detach", "-d", help="Return once the server is ready; it runs on (see `ps`, `logs`, `stop`)."
    ),
]
NameOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option("--name", help="The detached server's name for ps/logs/stop (default: the profile's)."),
]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Stream vLLM's output too (default: phases only; all in the log)."),
]
ApiKeyFileOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--api-key-file",
        help="File whose first line is the API key clients must send (else $DSV4SERVE_API_KEY).",
    ),
]

# the multi-node options of plan, up and export
MAX_NODES = 128
NodesOpt = Annotated[
    Optional[int],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--nodes",
        min=1,
        max=MAX_NODES,
        help="Nodes in the deployment, each like this one (or declare them: --hardware 2x8xH100-80GB).",
    ),
]
NodeRankOpt = Annotated[
    int,
    typer.Option(
        "--node-rank", min=0, help="This node's rank: 0 is the head (serves the API), others workers."
    ),
]
MasterAddrOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--master-addr", help="The head node's address, which every node must reach."),
]
MasterPortOpt = Annotated[
    int,
    typer.Option(
        "--master-port",
        min=1,
        max=65534,
        help="vLLM's port on the head (DP+EP: its RPC port); dsv4serve's own watch uses the next one.",
    ),
]
StrategyOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--strategy", help="tp, tp-ep, dp-ep or tp-pp (default: the planner's choice, with a reason)."
    ),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor", help="Across nodes: mp (vLLM's own multiprocessing) or ray (a running Ray cluster)."
    ),
]

# the health watch once a server is ready (up, up -d, export)
OnUnhealthyOpt = Annotated[
    Optional[str],  # noqa: UP045 - None means "warn"
    typer.Option(
        "--on-unhealthy",
        help="When the health watch finds the server stalled or its memory grown: warn (default), "
        "restart (with backoff, at most --max-restarts), stop (exit 6), or off (no watch).",
    ),
]
StallOpt = Annotated[
    Optional[float],  # noqa: UP045 - None means the profile's default
    typer.Option(
        "--stall-s",
        help="Stalled: requests running (or the one-token probe waiting) and no token for this many "
        "seconds (default: 30 on the CPU, 60 on GPUs, 300 for DeepSeek-V4).",
    ),
]
MemoryMarginOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--memory-margin",
        help="Memory growth past what the server held once ready that is flagged: 512MiB, 2GiB "
        "(default: 512MiB on the CPU, per GPU the larger of 2GiB and 2% of its planned use).",
    ),
]
MaxRestartsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--max-restarts", min=0, max=100, help="--on-unhealthy restart: restarts in a row (default 3)."
    ),
]

# route's and route eval's
UrlOpt = Optional[str]  # noqa: UP045 - typer needs Optional here
FlashModelOpt = Annotated[
    UrlOpt,
    typer.Option("--flash-model", metavar="NAME", help="Flash's model name (default: its /v1/models)."),
]
FlashKeyFileOpt = Annotated[
    UrlOpt,
    typer.Option(
        "--flash-key-file",
        metavar="FILE",
        help="File holding Flash's API key (else $DSV4SERVE_FLASH_API_KEY).",
    ),
]
ProKeyFileOpt = Annotated[
    UrlOpt,
    typer.Option(
        "--pro-key-file", metavar="FILE", help="File holding Pro's API key (else $DSV4SERVE_PRO_API_KEY)."
    ),
]
