"""Frozen data types of a resolved profile (what every later stage reads)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The parallel strategies a hardware rule or --strategy may name (the planner implements them):
# tp: tensor parallel; tp-ep: TP + expert parallel; dp-ep: data parallel attention + expert parallel;
# tp-pp: TP within each node, pipeline parallel across nodes.
STRATEGIES = ("tp", "tp-ep", "dp-ep", "tp-pp")
# The checkpoints dsv4serve writes itself (model.generate; weights/generated.py writes each, and a test
# holds the two lists equal): tiny (DeepSeek-V3 architecture), DeepSeek-V4 shapes tiny-v4, flash, pro.
GENERATED = ("tiny", "tiny-v4", "flash", "pro")
EXECUTORS = ("mp", "ray")  # vLLM's multiprocessing backend across nodes, or a running Ray cluster
# Speculative decoding the planner models (--spec): off, the checkpoint's MTP head, its DSpark draft.
SPEC_METHODS = ("mtp", "dspark")
SPEC_CHOICES = ("off", *SPEC_METHODS)


@dataclass(frozen=True)
class KvCache:
    """The KV-cache structure vLLM registers per layer (DeepSeek-V4: shared/facts/deepseek-v4-kv-cache.md)."""

    layout: str  # "deepseek_v4", the only structured layout for now
    compress_ratios: tuple[int, ...]  # one per layer, MTP layers dropped: 0/1 = SWA only, 4 = CSA, 128 = HCA
    sliding_window: int = 128  # tokens of the SWA cache every layer keeps
    head_dim: int = 512  # compressor state width (fp32 kv + score)
    index_head_dim: int = 128  # the C4 indexer's key width


@dataclass(frozen=True)
class Draft:
    """The speculative-decoding draft a checkpoint carries. vLLM loads its tensors (`mtp.*`) only when a
    speculative config asks for them (shared/facts/vllm-versions-v4.md), so the planner counts it only
    with --spec on."""

    method: str  # mtp | dspark
    # Draft decoder layers; each registers one SWA-only KV layer after the target's (vLLM's V4 attention
    # gives layer ids >= num_hidden_layers compress ratio 1): MTP 1, DSpark 3.
    layers: int = 1
    weights_bytes: int = 0  # the draft's share of model.weights_bytes; 0 = not known offline
    tokens: int = 0  # default num_speculative_tokens (the recipes'); 0 = block_size (DSpark)
    tokens_hopper: int = 0  # the default on compute capability 9.x GPUs; 0 = tokens
    block_size: int = 0  # DSpark: config.json's dspark_block_size; 0 = not known offline


@dataclass(frozen=True)
class GgufQuant:
    """One quantization of a GGUF repo (llama.cpp): its files and their size."""

    name: str  # as the repo names it: UD-Q4_K_XL, IQ2XXS, ...
    pattern: str  # a glob over the repo's paths that matches this quant's files (all its shards), only
    bytes: int = 0  # all its files together; 0 = not known offline (the hub's listing sizes it)
    exact: bool = False  # bytes is the hub's listing (else a stand-in, replaced before the first byte)


@dataclass(frozen=True)
class Gguf:
    """The GGUF files llama.cpp serves for this model (planning/llamacpp.py, weights/gguf.py): a hub
    repo with its quants, or none, when the weights step converts the checkpoint (tiny-v4)."""

    repo: str | None = None
    revision: str | None = None
    quants: tuple[GgufQuant, ...] = ()
    quant: str | None = None  # the default quant; None = the largest that fits RAM plus VRAM


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
    hidden_size: int = 0  # config.json hidden_size; 0 = not given (the planner's fixed overhead figures)
    weights_bytes: int = 0  # size of the checkpoint on disk == bytes loaded onto GPUs
    kv_bytes_per_token: int = 0  # KV cache bytes per token, all layers, at serve.kv_cache_dtype
    kv_cache: KvCache | None = None  # structured cache (V4): replaces kv_bytes_per_token in the planner
    # Routed experts' share of weights_bytes: data parallel + expert parallel replicates the rest (the
    # dense weights) on every GPU. 0 = unknown: DP+EP is then planned with every weight replicated.
    expert_weights_bytes: int = 0
    max_context: int = 0  # max_position_embeddings
    min_compute_capability: str = "0.0"  # "9.0"
    # The checkpoint family (flash, pro), this variant of it (0731, preview, nvfp4), and where its
    # figures come from (facts files, recipes, the hub).
    family: str = ""
    variant: str = ""
    sources: tuple[str, ...] = ()
    shards: int = 0  # *.safetensors files; 0 = not given
    # False: weights_bytes is a stand-in (the exact size is not known offline); `up` re-plans with the
    # hub's file sizes before the first byte is downloaded.
    weights_exact: bool = True
    draft: Draft | None = None  # the speculative-decoding draft it carries, if any
    fallback: str = ""  # the profile to use on GPUs below min_compute_capability (named in the refusal)
    gguf: Gguf | None = None  # llama.cpp's files of this model (--engine llama.cpp)


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
    speculative: str | None = None  # off | mtp | dspark: the default of --spec (None = off)
    speculative_tokens: int | None = None  # the default of --spec-tokens (None = the draft's default)
    engine: str | None = None  # vllm | llama.cpp | transformers | auto (None = auto): --engine's default
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
