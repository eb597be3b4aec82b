"""Frozen data types of a resolved profile (what every later stage reads)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The parallel strategies a hardware rule or --strategy may name (the planner implements them):
# tp: tensor parallel; tp-ep: TP + expert parallel; dp-ep: data parallel attention + expert parallel;
# tp-pp: TP within each node, pipeline parallel across nodes.
STRATEGIES = ("tp", "tp-ep", "dp-ep", "tp-pp")
# The checkpoints dsv4serve writes itself (model.generate; weights/generated.py writes each, and a test
# holds the two lists equal): tiny (DeepSeek-V3 architecture), DeepSeek-V4 shapes tiny-v4 and flash.
GENERATED = ("tiny", "tiny-v4", "flash")
EXECUTORS = ("mp", "ray")  # vLLM's multiprocessing backend across nodes, or a running Ray cluster


@dataclass(frozen=True)
class KvCache:
    """The KV-cache structure vLLM registers per layer (DeepSeek-V4: shared/facts/deepseek-v4-kv-cache.md)."""

    layout: str  # "deepseek_v4", the only structured layout for now
    compress_ratios: tuple[int, ...]  # one per layer, MTP layers dropped: 0/1 = SWA only, 4 = CSA, 128 = HCA
    sliding_window: int = 128  # tokens of the SWA cache every layer keeps
    head_dim: int = 512  # compressor state width (fp32 kv + score)
    index_head_dim: int = 128  # the C4 indexer's key width


@dataclass(frozen=True)
class Model:
    """What to serve: where the weights come from and the facts the planner needs."""

    # Source: exactly one of repo, path, generate.
    repo: str | None = None  # hub repo id, e.g. deepseek-ai/DeepSeek-V4-Flash
    revision: str | None = None  # pinned commit (or branch/tag) for repo
    path: str | None = None  # local checkpoint directory
    generate: str | None = None  # a checkpoint dsv4serve makes offline (e.g. "tiny")
    allow_patterns: tuple[str, ...] = ()  # files vLLM needs; empty = all
    # Facts (from the checkpoint; see shared/facts).
    total_params: int = 0
    active_params: int = 0
    layers: int = 0
    attention_heads: int = 0
    weights_bytes: int = 0  # size of the checkpoint on disk == bytes loaded onto GPUs
    kv_bytes_per_token: int = 0  # KV cache bytes per token, all layers, at serve.kv_cache_dtype
    kv_cache: KvCache | None = None  # structured cache (V4): replaces kv_bytes_per_token in the planner
    # Routed experts' share of weights_bytes: data parallel + expert parallel replicates the rest (the
    # dense weights) on every GPU. 0 = unknown: DP+EP is then planned with every weight replicated.
    expert_weights_bytes: int = 0
    max_context: int = 0  # max_position_embeddings
    min_compute_capability: str = "0.0"  # "9.0"


@dataclass(frozen=True)
class Serve:
    """vLLM settings."""

    served_model_name: str = ""
    max_model_len: int = 0
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str | None = None
    block_size: int | None = None
    dtype: str | None = None
    tokenizer_mode: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    trust_remote_code: bool = False
    enable_expert_parallel: bool = False
    startup_timeout_s: int = 0  # 0 = sized from the weights
    min_vllm_version: str | None = None  # refuse an older installed vLLM (exit 2)
    max_num_batched_tokens: int | None = None  # tokens per scheduler step; None = vLLM's GPU default (8192)
    deep_gemm_warmup: str | None = None  # full | relax | skip -> VLLM_DEEP_GEMM_WARMUP
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted (name, value) pairs


@dataclass(frozen=True)
class HardwareRule:
    """A supported layout: this many GPUs (per node) of at least this much memory use this TP size."""

    gpus: int
    min_vram_gib: float
    tensor_parallel_size: int
    nodes: int = 1  # nodes of `gpus` GPUs each
    strategy: str | None = None  # tp | tp-ep | dp-ep | tp-pp (planning.strategy); None = the planner's


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    model: Model
    serve: Serve
    hardware: tuple[HardwareRule, ...] = ()
    cpu_ok: bool = False  # may run on the vLLM CPU build (the tiny profile)
    source: str = ""  # file the profile was read from
    origin: str = ""  # "builtin", "user", "path", ... (where on the search path)
    extends: tuple[str, ...] = field(default=())  # chain of parents, nearest first
