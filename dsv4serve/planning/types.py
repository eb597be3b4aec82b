"""Frozen data types of a plan (what the planner returns and the commands render)."""

from __future__ import annotations

from dataclasses import dataclass

from dsv4serve.hardware.inventory import Gpu

DEFAULT_HOST = "127.0.0.1"  # local only, unless --host says otherwise
DEFAULT_PORT = 8000
DEFAULT_MASTER_PORT = 29501  # vLLM's own --master-port default


@dataclass(frozen=True)
class Overrides:
    """What the command line changes in a profile's plan."""

    model_location: str | None = None  # local path or hub repo id; default: profile.model.repo / path
    max_model_len: int | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    cuda_graphs: bool | None = None  # None = the profile's serve.enforce_eager
    tensor_parallel_size: int | None = None  # None = chosen by the planner
    extra_args: tuple[str, ...] = ()  # appended verbatim, last
    device: str | None = None  # "cuda" | "cpu"; None = cuda when GPUs are given, else cpu
    # JIT cache variables for vLLM's env (jit_cache.cache_env: those the user set are left out) and the
    # DeepGEMM warmup (--warmup or the user's VLLM_DEEP_GEMM_WARMUP; None = the profile's or relax).
    jit_cache_env: tuple[tuple[str, str], ...] = ()
    deep_gemm_warmup: str | None = None
    # Several nodes (planning/): the strategy (None = the planner's), vLLM's executor across nodes
    # (mp: its own multiprocessing backend, ray: a running Ray cluster), and the head's address.
    strategy: str | None = None
    executor: str = "mp"
    master_addr: str | None = None  # None: the commands show HEAD_ADDR
    master_port: int = DEFAULT_MASTER_PORT  # vLLM's default; DP+EP uses it as --data-parallel-rpc-port
    # The vLLM release the plan models (engines/vllm/releases.py): "" = 0.26, silently (the pure
    # default); "none" = none installed (the newest known, said so); else a version, with where it
    # came from ("installed", "--vllm-version").
    vllm_version: str = ""
    vllm_version_source: str = ""
    # Speculative decoding (planning/spec.py): --spec off|mtp|dspark (None = the profile's, else off),
    # --spec-tokens K (None = the draft's default); the planner sets speculative_config, vLLM's JSON.
    spec: str | None = None
    spec_tokens: int | None = None
    speculative_config: str = ""


@dataclass(frozen=True)
class MemoryRow:
    """The memory budget of one device (a GPU, or the host on the CPU path), in bytes."""

    device: str  # "0", "1", ... (GPU index) or "cpu"
    name: str
    weights: int
    kv_cache: int
    overhead: int
    total: int
    budget: (
        int  # what vLLM may use: utilization x CUDA's total memory (host RAM on the CPU path; 0 = unknown)
    )
    free: int
    # What NVML should show as used by the server on this GPU once it runs: vLLM fills the KV cache up
    # to the budget, plus what it holds outside it (outside_budget_bytes). 0 on the CPU path.
    expected_used: int = 0
    # KV cache tokens this GPU can hold: budget - weights - overhead, over the bytes per token. A lower
    # bound: the overhead figure is on the safe side. 0 where unknown (CPU path, no KV facts).
    # DeepSeek-V4: whole blocks of the shared pool x 256, the full group's capacity.
    kv_capacity_tokens: int = 0
    kv_capacity_seqs: int = 0  # sequences of max_model_len this GPU's KV cache holds at once
    # DeepSeek-V4: what vLLM 0.26 will log for that pool, "GPU KV cache size: N tokens" and "Maximum
    # concurrency for max_model_len tokens per request: X x" (engines.vllm.kv_cache.V4Layout.vllm_report);
    # 0 elsewhere.
    vllm_kv_tokens: int = 0
    vllm_max_concurrency: float = 0.0


@dataclass(frozen=True)
class KvSummary:
    """How a plan's KV cache is sized (per GPU, every TP rank the same), for the plan's text and JSON."""

    layout: str  # "deepseek_v4" (model.kv_cache) or "per_token" (model.kv_bytes_per_token)
    block_size: int
    bytes_per_token: float  # long-context bytes per token
    block_stride: int  # bytes one block id costs in vLLM's shared pool (deepseek_v4; else 0)
    fixed_blocks_per_sequence: int  # sliding-window and state blocks each decoding sequence adds
    in_flight_tokens: int  # tokens vLLM's start-up check adds for chunks in flight (deepseek_v4; else 0)
    startup_need: int  # the KV memory vLLM's start-up check demands for max_model_len (reserved included)
    reserved: int = 0  # of which the null block vLLM 0.29+ holds back before the check (one stride)
    batched_tokens: int = 0  # max_num_batched_tokens the check was sized with (deepseek_v4; else 0)


@dataclass(frozen=True)
class SpecSummary:
    """The speculative decoding a plan serves, and the draft's memory per GPU (planning/spec.py)."""

    method: str  # off | mtp | dspark
    tokens: int = 0  # num_speculative_tokens
    draft_layers: int = 0
    draft_weights_bytes: int = 0  # the whole draft; 0 = not known offline, or off
    draft_weights_per_gpu: int = 0
    draft_kv_bytes: int = 0  # what the draft's KV layers add to vLLM's start-up need, per GPU
    config: str = ""  # the --speculative-config vLLM gets


@dataclass(frozen=True)
class NodePlan:
    """What one node runs: the head serves the API, each worker runs its share headless."""

    rank: int
    role: str  # "head" | "worker"
    argv: tuple[str, ...]  # the whole command: `vllm serve MODEL ...` (or `ray start ...` for Ray workers)
    env: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Plan:
    profile: str
    device: str  # "cuda" | "cpu"
    fits: bool
    tensor_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float
    cuda_graphs: bool
    model: str  # what vLLM loads: local path or hub repo id
    gpus: tuple[Gpu, ...]  # the GPUs the server will use
    memory: tuple[MemoryRow, ...]
    args: tuple[str, ...]  # vLLM args after `serve`, MODEL first
    env: tuple[tuple[str, str], ...]
    problems: tuple[str, ...] = ()
    # The engine that serves it (engines.base.ENGINES) and that engine's own decisions: for llama.cpp a
    # planning.engine_types.GgufPlan (quant, offload, context), for Transformers a TransformersPlan.
    engine: str = "vllm"
    engine_plan: object = None
    notes: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()  # layouts that would fit, e.g. "8xH200"
    verdict: str = ""  # one line: "fits on 2x H200", or the main reason it does not
    hint: str = ""  # what to do when it does not fit, where the planner knows better than the suggestions
    kv: KvSummary | None = None  # how the KV cache was sized (GPU path)
    # Parallelism (planning/strategy.py): tp | tp-ep | dp-ep | tp-pp, why, and the sizes besides TP.
    strategy: str = "tp"
    strategy_reason: str = ""
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    executor: str = "mp"
    nodes: tuple[NodePlan, ...] = ()  # one per node, the head first; `args`/`env` above are the head's
    vllm_release: str = ""  # the vLLM release whose KV layout, start-up check and defaults were modeled
    spec: SpecSummary | None = None  # speculative decoding (GPU path)
    graphs_tradeoff: str = ""  # eager against CUDA graphs as measured for this model family; "" if never
