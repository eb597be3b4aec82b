"""vLLM's per-GPU memory model: fixed overheads, KV cache per GPU, memory outside vLLM's budget (pure)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dsv4serve.engines.vllm.kv_cache import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    V4_BLOCK_SIZE,
    V4Layout,
    default_batched_tokens,
    in_flight_tokens,
    v4_layout,
)
from dsv4serve.engines.vllm.releases import DEFAULT, Release
from dsv4serve.hardware.inventory import GiB, MiB, gib
from dsv4serve.planning.types import KvSummary
from dsv4serve.profiles.types import Profile

# Per-GPU memory vLLM needs besides weights and KV cache. vLLM's budget per GPU is
# gpu_memory_utilization x total memory (vllm/v1/worker/utils.py request_memory), and the KV cache gets
# what is left after weights, non-torch memory, peak activations, CUDA graphs and a 150 MiB buffer
# (gpu_worker.py). A model without its dims (hidden_size) keeps these fixed figures, on the safe side
# for the DeepSeek-V4 MoE models; the facts note that newer vLLM releases need ~4 GiB more per GPU.
NON_TORCH_BYTES = 1 * GiB  # CUDA context, cuBLAS/NCCL workspaces, custom all-reduce buffers
ACTIVATION_BYTES = 4 * GiB  # peak activations of vLLM's profiling run (max_num_batched_tokens)
VLLM_BUFFER_BYTES = 150 * MiB  # vLLM's own redundancy buffer against profiling underestimates
CUDA_GRAPH_BYTES = 3 * GiB  # captured CUDA graphs' private pools, only when eager mode is off
# DeepSeek-V4 with its hidden size: the overhead scales with the model, fitted on vLLM 0.26's own
# accounting lines at TP 1 on one H200 (docs/validation.md): tiny-v4 (hidden 2048) and Flash cut to 4
# layers (hidden 4096), both at max_num_batched_tokens 8192.
# - Peak activation of the profiling run: 1.64 and 3.19 GiB, i.e. 105.0 and 102.1 B per hidden unit per
#   batched token; the larger is used.
# - "Model loading took" beyond the files' bytes: 0.67 and 0.79 GiB (vLLM's own buffers: the fp32
#   cos/sin caches of the 1M-position rotary embeddings are 2 x 256 MiB of it).
# - Non-torch memory: 0.22-0.24 GiB. TP > 1 adds NCCL's and custom all-reduce's buffers, not measured
#   for V4: there the fixed NON_TORCH_BYTES stays.
V4_ACTIVATION_BYTES_PER_HIDDEN_TOKEN = 105
V4_LOAD_BUFFER_BYTES = 800 * MiB
V4_NON_TORCH_TP1_BYTES = 256 * MiB
# Memory NVML shows beyond vLLM's budget, measured on H200 with vLLM 0.26.0 (docs/validation.md): vLLM
# fills its KV cache up to utilization x total, and each GPU then also holds 652 MiB more at TP 1 (CUDA
# context) and 2170-2212 MiB more at TP 2 and 4 (NCCL and custom all-reduce buffers on top).
CUDA_CONTEXT_BYTES = 652 * MiB
TP_COMM_BYTES = 1540 * MiB
# DeepSeek-V4 holds more once its kernels have run (Flash cut to 4 layers, TP 1, after dsv4serve's
# traffic warm-up): 5.43 GiB beyond the budget eager, 4.85 GiB with CUDA graphs, against tiny-v4's 0.69
# GiB before any traffic. Past the CUDA context that is memory CUDA keeps for the JIT-compiled kernels
# (modules, and local memory sized for the widest kernel over every SM), which the torch allocator
# vLLM budgets never sees. Only one shape measured it: the larger figure, for every V4 model.
V4_KERNEL_BYTES = 4830 * MiB
# CPU path (recipes/vllm-cpu.md: ~2.8 GiB RSS over 3 processes at TP 1, ~4.1 GiB at TP 2).
CPU_BASE_BYTES = 3 * GiB // 2
CPU_PER_RANK_BYTES = 3 * GiB // 2
MIN_CONTEXT = 4096  # below this a chat model is not useful: refuse rather than lower further
DEFAULT_BLOCK_SIZE = 16  # vLLM's default --block-size on CUDA

# MLA-style latent KV cache and tensor parallelism: vLLM gives an MLA model a single KV head
# (ModelConfig.get_num_kv_heads returns 1 when use_mla; other models get heads // tp) and every TP rank
# keeps the whole latent cache, so the per-GPU KV cache is NOT divided by the TP size. DeepSeek-V4's
# CSA/HCA compressed caches follow the same scheme. Measured on H200 (docs/validation.md): with the same
# budget per GPU vLLM reported 19.26M, 19.40M and 19.44M KV tokens per GPU at TP 1, 2 and 4, i.e.
# 2,304 B/token on every rank: the cache is replicated, not split.
KV_CACHE_SPLIT_ACROSS_TP = False


def kv_cache_bytes_per_gpu(kv_bytes_per_token: int, tokens: int, tensor_parallel_size: int) -> int:
    """KV cache one GPU holds for `tokens` tokens of context (see KV_CACHE_SPLIT_ACROSS_TP)."""
    total = kv_bytes_per_token * tokens
    return math.ceil(total / tensor_parallel_size) if KV_CACHE_SPLIT_ACROSS_TP else total


def outside_budget_bytes(tensor_parallel_size: int, v4_kernels: bool = False) -> int:
    """Per-GPU memory a running server holds beyond vLLM's own budget (measured; see CUDA_CONTEXT_BYTES),
    DeepSeek-V4's kernels' memory included when `v4_kernels` (see V4_KERNEL_BYTES)."""
    comm = TP_COMM_BYTES if tensor_parallel_size > 1 else 0
    return CUDA_CONTEXT_BYTES + comm + (V4_KERNEL_BYTES if v4_kernels else 0)


@dataclass(frozen=True)
class Overhead:
    """Per-GPU memory vLLM takes from its budget besides the weights' files and the KV cache."""

    activation: int  # the profiling run's peak activations
    non_torch: int  # CUDA context, cuBLAS/NCCL workspaces, all-reduce buffers
    load_buffers: int  # what vLLM's model holds beyond the checkpoint's bytes (0 when not modeled)
    vllm_buffer: int = VLLM_BUFFER_BYTES
    cuda_graphs: int = 0
    release_extra: int = 0  # 0.27+'s non-KV accounting (engines/vllm/releases.py)
    batched_tokens: int = 0  # the activation's max_num_batched_tokens; 0 = the fixed figures
    hidden_size: int = 0

    @property
    def total(self) -> int:
        parts = (self.activation, self.non_torch, self.load_buffers, self.vllm_buffer, self.cuda_graphs)
        return sum(parts) + self.release_extra

    @property
    def scaled(self) -> bool:
        return self.batched_tokens > 0

    def describe(self) -> str:
        """The overhead column's parts, one line."""
        if not self.scaled:
            head = (
                f"fixed figures: activations {gib(self.activation, 2)} + non-torch "
                f"{gib(self.non_torch, 2)} + vLLM's reserve {gib(self.vllm_buffer, 2)}"
            )
        else:
            head = (
                f"activations {gib(self.activation, 2)} ({V4_ACTIVATION_BYTES_PER_HIDDEN_TOKEN} B x hidden "
                f"{self.hidden_size} x {self.batched_tokens:,} batched tokens) + vLLM's buffers beyond the "
                f"weights {gib(self.load_buffers, 2)} + non-torch {gib(self.non_torch, 2)} + vLLM's reserve "
                f"{gib(self.vllm_buffer, 2)}"
            )
        if self.cuda_graphs:
            head += f" + CUDA graphs {gib(self.cuda_graphs, 2)}"
        if self.release_extra:
            head += f" + 0.27+'s non-KV accounting {gib(self.release_extra, 2)}"
        return f"{head} = {gib(self.total, 2)}"


def overhead_bytes(cuda_graphs: bool) -> int:
    """Fixed per-GPU memory besides weights and KV cache (a model without its dims)."""
    fixed = NON_TORCH_BYTES + ACTIVATION_BYTES + VLLM_BUFFER_BYTES
    return fixed + (CUDA_GRAPH_BYTES if cuda_graphs else 0)


def overhead_for(
    profile: Profile, cuda_graphs: bool, ctx: KvContext, tensor_parallel_size: int, release: Release
) -> Overhead:
    """vLLM's per-GPU overhead for this model: scaled from its dims for DeepSeek-V4 with a hidden size
    (see V4_ACTIVATION_BYTES_PER_HIDDEN_TOKEN), else the fixed figures."""
    graphs = CUDA_GRAPH_BYTES if cuda_graphs else 0
    v4 = profile.model.kv_cache is not None
    extra = release.non_kv_extra_bytes if v4 else 0  # reported for V4 only; others keep 0.26's
    hidden = profile.model.hidden_size
    if not (v4 and hidden > 0):
        return Overhead(ACTIVATION_BYTES, NON_TORCH_BYTES, 0, cuda_graphs=graphs, release_extra=extra)
    batched = ctx.batched_tokens
    return Overhead(
        activation=V4_ACTIVATION_BYTES_PER_HIDDEN_TOKEN * hidden * batched,
        non_torch=V4_NON_TORCH_TP1_BYTES if tensor_parallel_size == 1 else NON_TORCH_BYTES,
        load_buffers=V4_LOAD_BUFFER_BYTES,
        cuda_graphs=graphs,
        release_extra=extra,
        batched_tokens=batched,
        hidden_size=hidden,
    )


# --- the KV cache of a profile: one bytes-per-token figure, or DeepSeek-V4's structured cache -----------


@dataclass(frozen=True)
class KvContext:
    """What besides the profile sizes vLLM's KV cache: the release modeled, the scheduler's step, the
    GPU (vLLM's default step follows its memory), pipeline stages and async scheduling (the tokens in
    flight), and a speculative draft's KV layers."""

    release: Release = DEFAULT
    batched: int | None = None  # max_num_batched_tokens as vLLM sees it; None = its default for the GPU
    gpu_memory: int = 0  # CUDA's total memory of the GPU; 0 = unknown (the H100/H200 default, 8192)
    gpu_name: str = ""
    pipeline_parallel_size: int = 1
    async_scheduling: bool = True  # vLLM's default; not with the Ray executor
    draft_layers: int = 0

    @property
    def batched_tokens(self) -> int:
        if self.batched:
            return self.batched
        if not self.gpu_memory:
            return DEFAULT_MAX_NUM_BATCHED_TOKENS
        return default_batched_tokens(self.release, self.gpu_memory, self.gpu_name)

    @property
    def in_flight(self) -> int:
        return in_flight_tokens(
            self.batched_tokens, self.release, self.pipeline_parallel_size, self.async_scheduling
        )


def kv_context(ctx: KvContext | int | None) -> KvContext:
    """A KvContext, from one or from a bare max_num_batched_tokens (None: vLLM's default)."""
    return ctx if isinstance(ctx, KvContext) else KvContext(batched=ctx)


def kv_block_size(profile: Profile) -> int:
    default = V4_BLOCK_SIZE if profile.model.kv_cache else DEFAULT_BLOCK_SIZE
    return profile.serve.block_size or default


def kv_layout(profile: Profile, ctx: KvContext | int | None = None) -> V4Layout | None:
    kv = profile.model.kv_cache
    if not kv:
        return None
    c = kv_context(ctx)
    return v4_layout(kv, kv_block_size(profile), c.release, c.draft_layers)


def kv_need_bytes(profile: Profile, tokens: int, tp: int, ctx: KvContext | int | None) -> int:
    """Per-GPU KV memory vLLM demands at start-up for a max_model_len of `tokens`: for V4 its own check
    (whole blocks of every group, chunks in flight included, and 0.29+'s null block reserved first),
    else bytes per token x tokens."""
    c = kv_context(ctx)
    layout = kv_layout(profile, c)
    if layout is not None:
        return layout.startup_need(tokens, c.in_flight) + layout.reserved
    return kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, tokens, tp)


def kv_fit_len(profile: Profile, room: int, requested: int, tp: int, ctx: KvContext | int | None) -> int:
    """`requested` when its start-up need fits in `room`, else the largest multiple of the block size
    whose need does (0 when none does). The need only grows with the length: a binary search."""
    if kv_need_bytes(profile, requested, tp, ctx) <= room:
        return requested
    block = kv_block_size(profile)
    low, high = 0, requested // block
    while low < high:
        mid = (low + high + 1) // 2
        if kv_need_bytes(profile, mid * block, tp, ctx) <= room:
            low = mid
        else:
            high = mid - 1
    return low * block


def kv_capacity(
    profile: Profile, pool: int, max_len: int, tp: int, ctx: KvContext | int | None = None
) -> tuple[int, int, int, float]:
    """(tokens, concurrent max_len sequences, vLLM's logged tokens, vLLM's logged concurrency) of a KV
    pool of `pool` bytes per GPU. V4: whole blocks of the shared pool, tokens of full-group capacity,
    each sequence ceil(L / 256) + its fixed blocks; vLLM's own figures differ (V4Layout.vllm_report).
    Elsewhere the last two are 0."""
    c = kv_context(ctx)
    layout = kv_layout(profile, c)
    if layout is not None:
        cap = layout.capacity(pool, max_len, c.in_flight)
        return cap.tokens, cap.max_len_sequences, cap.vllm.tokens, cap.vllm.max_concurrency
    per_token = kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, 1, tp)
    tokens = max(pool, 0) // per_token if per_token > 0 else 0
    return tokens, tokens // max_len if max_len else 0, 0, 0.0


def kv_summary(profile: Profile, max_len: int, tp: int, ctx: KvContext | int | None) -> KvSummary:
    c = kv_context(ctx)
    layout = kv_layout(profile, c)
    need = kv_need_bytes(profile, max_len, tp, c)
    if layout is None:
        per_token = kv_cache_bytes_per_gpu(profile.model.kv_bytes_per_token, 1, tp)
        return KvSummary("per_token", kv_block_size(profile), per_token, 0, 0, 0, need)
    return KvSummary(
        profile.model.kv_cache.layout,
        layout.block_size,
        layout.bytes_per_token,
        layout.stride,
        layout.fixed_blocks_per_sequence,
        c.in_flight,
        need,
        reserved=layout.reserved,
        batched_tokens=c.batched_tokens,
    )


def with_draft(ctx: KvContext, draft_layers: int) -> KvContext:
    return dataclasses.replace(ctx, draft_layers=draft_layers)
