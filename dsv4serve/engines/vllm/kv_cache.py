"""DeepSeek-V4's KV cache as vLLM 0.26 lays it out (FlashMLA path, fp8_ds_mla entries), as pure data.

From the compress ratios this derives the KV objects each layer registers, vLLM's grouping of them into
one shared block pool, the bytes one block id costs (the stride), the blocks a sequence holds, the
start-up check for max_model_len, what a pool of a given size holds, and what vLLM logs about that
pool ("GPU KV cache size", "Maximum concurrency"). The figures and the vLLM source lines behind them are
in shared/facts/deepseek-v4-kv-cache.md. Every spec has one KV head and none is divided by TP, so every
figure here is per GPU at any TP size.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Protocol


class KvCache(Protocol):
    """The cache facts of a profile's model.kv_cache that this layout reads."""

    compress_ratios: tuple[int, ...]
    sliding_window: int
    head_dim: int
    index_head_dim: int


V4_BLOCK_SIZE = 256  # DeepSeek-V4's compressed caches count 256-token blocks (its profiles set it)
# fp8_ds_mla: FlashMLA on SM90 rewrites any fp8 cache dtype to it (attention.py:68-96); one entry is
# 512 fp8 values + UE8M0 scales + a bf16 rope part = 584 B, and every page is aligned to 576 B.
ENTRY_BYTES = 584
PAGE_ALIGN = 576
SWA_BLOCK = 64  # tokens per block of the per-layer sliding-window cache (sparse_swa.py:77)
STATE_BYTES = 4  # compressor states are fp32
# Compressor state block (tokens) and its kv+score overlap factor per compress ratio (compressor.py:133-182).
STATE_BLOCK = {4: 4, 128: 8}
STATE_OVERLAP = {4: 2, 128: 1}
INDEX_SCALE_BYTES = 4  # the C4 indexer keeps one fp32 scale per 128 fp8 values (attention.py:731-745)
# In-flight tokens of vLLM's start-up check: max_concurrent_batches x max_num_batched_tokens, and the
# GPU API server runs 2 batches at once with async scheduling (config/vllm.py:512-533).
CONCURRENT_BATCHES = 2
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192  # the GPU API server's default (engine/arg_utils.py:2460-2470)
DEFAULT_IN_FLIGHT = CONCURRENT_BATCHES * DEFAULT_MAX_NUM_BATCHED_TOKENS


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


@dataclass(frozen=True)
class CacheSpec:
    """One KV object a layer registers: its block (tokens) and page (bytes); window None = full attention."""

    name: str  # "L3.c128", "L3.c128_state", ...
    block: int
    page: int
    window: int | None


@dataclass(frozen=True)
class CacheGroup:
    """A KV-cache group: layers sharing one block table. window None = the full-attention group."""

    block: int
    window: int | None
    pages: tuple[int, ...]  # the (padded) page of each KV object in the group

    def max_layers_per_page(self) -> int:
        return max(Counter(self.pages).values())


@dataclass(frozen=True)
class V4Layout:
    """vLLM's pool layout for one checkpoint: every block id costs `stride` bytes on every GPU."""

    block_size: int  # tokens per block of the full group (--block-size 256)
    groups: tuple[CacheGroup, ...]  # the full group first, then the sliding groups
    layer_tuples: int  # num_layer_tuples (_approximate_gcd of the groups' layer counts)
    stride: int  # bytes per block id: sum over page sizes of page x max layers of that size in a group
    full_pages: tuple[int, ...]  # distinct page sizes of the full group, largest first

    @property
    def bytes_per_token(self) -> float:
        """Long-context bytes per token: what one more full block of 256 tokens costs."""
        return self.stride / self.block_size

    def group_blocks(self, group: CacheGroup, length: int, in_flight: int = 1) -> int:
        """Blocks one group holds for a sequence of `length` with `in_flight` new tokens: every block of
        the full group, the window plus the tokens in flight of a sliding one (kv_cache_interface.py
        FullAttentionSpec 258-263, SlidingWindowSpec.max_admission_blocks_per_request 566-597)."""
        if group.window is None:
            return _cdiv(length, group.block)
        return _cdiv(min(group.window - 1 + in_flight, length), group.block) + 1

    def sliding_blocks(self, length: int, in_flight: int = 1) -> int:
        """Blocks the sliding groups hold for one sequence of `length` with `in_flight` new tokens."""
        return sum(self.group_blocks(g, length, in_flight) for g in self.groups if g.window)

    @property
    def fixed_blocks_per_sequence(self) -> int:
        """Blocks a long decoding sequence holds beyond its ceil(L / block_size) full blocks."""
        return self.sliding_blocks(1 << 40)

    def sequence_blocks(self, length: int) -> int:
        """Blocks one decoding sequence of `length` tokens holds."""
        return _cdiv(length, self.block_size) + self.sliding_blocks(length)

    def startup_need(self, max_model_len: int, in_flight_tokens: int) -> int:
        """Bytes vLLM's start-up check demands for one max_model_len request with `in_flight_tokens` in
        flight (kv_cache_utils.py _max_memory_usage_bytes_from_groups, 1832-1880): pages x widest
        group x the bytes of one tuple of the full group's page sizes."""
        pages = _cdiv(max_model_len, self.block_size) + self.sliding_blocks(max_model_len, in_flight_tokens)
        widest = max(g.max_layers_per_page() for g in self.groups)
        return pages * widest * sum(self.full_pages)

    def vllm_report(self, num_blocks: int, max_model_len: int, in_flight_tokens: int) -> VllmKvReport:
        """What vLLM 0.26 logs for a pool of `num_blocks` block ids: "GPU KV cache size: S tokens" and
        "Maximum concurrency for max_model_len tokens per request: X x" (kv_cache_utils.py 2163-2182).

        X = num_blocks / cdiv(L x sum over groups of max_memory_usage_bytes, L x page_size_bytes of
        group 0) (get_max_concurrency_for_kv_cache_config, kv_cache_utils.py 937-957; L, the most layer
        names in a group, cancels). A DeepSeek-V4 group is a UniformTypeKVCacheSpecs: its page_size_bytes
        is the sum of its layers' (padded) pages, its max_memory_usage_bytes its blocks per request times
        that (kv_cache_interface.py 827-836). So vLLM weighs each group's blocks by the group's page sum
        over the full group's, although in the shared pool every block id costs a whole stride.
        S = int(X x max_model_len) (get_kv_cache_capacity, kv_cache_utils.py 1819-1829). The sliding
        groups count `in_flight_tokens` = VllmConfig.max_in_flight_tokens (config/vllm.py 525-533), the
        same T as the start-up check: T = 2 x 8192 reproduces the facts' Flash 10.31x / 10.8M and Pro
        7.20x / 7.5M per 100 GiB at 1M. (vLLM 0.32 sums the groups' blocks unweighted: other figures.)"""
        full_page = sum(self.groups[0].pages)
        request_bytes = sum(
            self.group_blocks(g, max_model_len, in_flight_tokens) * sum(g.pages) for g in self.groups
        )
        per_request = _cdiv(request_bytes, full_page)
        concurrency = num_blocks / per_request
        return VllmKvReport(num_blocks, per_request, concurrency, int(concurrency * max_model_len))

    def capacity(self, pool_bytes: int, max_model_len: int, in_flight: int = DEFAULT_IN_FLIGHT) -> KvCapacity:
        """What a KV pool of `pool_bytes` per GPU holds, and what vLLM will log about it with `in_flight`
        tokens in flight."""
        blocks = max(pool_bytes, 0) // self.stride  # _get_kv_cache_config_packed: available // stride
        return KvCapacity(
            blocks=blocks,
            tokens=blocks * self.block_size,
            max_len_sequences=blocks // self.sequence_blocks(max_model_len),
            vllm=self.vllm_report(blocks, max_model_len, in_flight),
        )


@dataclass(frozen=True)
class VllmKvReport:
    """vLLM 0.26's own capacity figures for one pool (see V4Layout.vllm_report)."""

    num_blocks: int  # block ids in the shared pool (available KV memory // stride)
    blocks_per_request: int  # what vLLM counts a max_model_len request as
    max_concurrency: float  # "Maximum concurrency for M tokens per request: {:.2f}x"
    tokens: int  # "GPU KV cache size: {:,} tokens" = int(max_concurrency x max_model_len)


@dataclass(frozen=True)
class KvCapacity:
    blocks: int  # block ids in the shared pool
    tokens: int  # blocks x block_size: tokens of full-group capacity (vLLM's "GPU KV cache size" differs)
    max_len_sequences: int  # sequences of max_model_len that decode at once, sliding blocks included
    vllm: VllmKvReport  # what vLLM logs about this pool


def in_flight_tokens(max_num_batched_tokens: int | None) -> int:
    """Tokens in flight at once in vLLM's start-up check."""
    return CONCURRENT_BATCHES * (max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS)


def layer_specs(kv: KvCache, block_size: int) -> tuple[CacheSpec, ...]:
    """Every KV object the layers register, in layer order."""
    swa_page = _round_up(SWA_BLOCK * ENTRY_BYTES, PAGE_ALIGN)
    index_entry = kv.index_head_dim + kv.index_head_dim // 128 * INDEX_SCALE_BYTES
    specs = []
    for i, ratio in enumerate(kv.compress_ratios):
        r = max(1, ratio)
        specs.append(CacheSpec(f"L{i}.swa", SWA_BLOCK, swa_page, kv.sliding_window))  # every layer
        if r == 1:
            continue
        # the compressed KV: one entry per r tokens, block_size tokens per block (attention.py:605-625)
        specs.append(
            CacheSpec(f"L{i}.c{r}", block_size, _round_up(block_size // r * ENTRY_BYTES, PAGE_ALIGN), None)
        )
        block, overlap = STATE_BLOCK[r], STATE_OVERLAP[r]
        state = _round_up(block * 2 * overlap * kv.head_dim * STATE_BYTES, PAGE_ALIGN)  # kv + score
        specs.append(CacheSpec(f"L{i}.c{r}_state", block, state, overlap * r))
        if r == 4:  # CSA layers add the lightning indexer: its keys and its own compressor state
            specs.append(
                CacheSpec(
                    f"L{i}.index", block_size, _round_up(block_size // 4 * index_entry, PAGE_ALIGN), None
                )
            )
            index_state = _round_up(block * 2 * overlap * kv.index_head_dim * STATE_BYTES, PAGE_ALIGN)
            specs.append(CacheSpec(f"L{i}.index_state", block, index_state, overlap * r))
    return tuple(specs)


def approximate_gcd(values: list[int], lower_bound: int) -> int:
    """The chunk size d >= lower_bound that pads the values least up to multiples of d; ties: larger d
    (kv_cache_utils.py _approximate_gcd)."""
    best, best_pad = lower_bound, None
    for d in range(lower_bound, max(values) + 1):
        pad = sum(-x % d for x in values)
        if best_pad is None or pad <= best_pad:
            best, best_pad = d, pad
    return best


@functools.lru_cache(maxsize=32)
def v4_layout(kv: KvCache, block_size: int = 256) -> V4Layout:
    """Group the specs as vLLM 0.26 does (kv_cache_utils.py group_and_unify_kv_cache_specs 1525,
    _get_kv_cache_groups_uniform_groups 1603, _get_kv_cache_config_packed 1306)."""
    specs = layer_specs(kv, block_size)
    full = [s.page for s in specs if s.window is None]
    if not full:
        raise ValueError("a deepseek_v4 cache needs at least one compressed layer (ratio 4 or 128)")
    sliding: dict[tuple[int, int], list[CacheSpec]] = {}
    for s in specs:
        if s.window is not None:
            sliding.setdefault((s.block, s.window), []).append(s)
    full_pages = tuple(sorted(set(full), reverse=True))
    counts = [max(Counter(full).values())] + [
        max(Counter(s.page for s in v).values()) for v in sliding.values()
    ]
    tuples = approximate_gcd(counts, lower_bound=counts[0])
    groups = [CacheGroup(block_size, None, tuple(full))]
    for (block, window), members in sliding.items():
        # each sliding page is padded up to the nearest full-group page, so a block id fits either
        by_page: dict[int, list[int]] = {}
        for s in members:
            padded = min((p for p in full_pages if p >= s.page), default=s.page)
            by_page.setdefault(padded, []).append(padded)
        per_page = max(len(v) for v in by_page.values())
        # layer tuples (one object of each page size) dealt round-robin into ceil(n / tuples) groups
        rows = [[pages[i] for pages in by_page.values() if i < len(pages)] for i in range(per_page)]
        split = _cdiv(per_page, tuples)
        for g in range(split):
            groups.append(CacheGroup(block, window, tuple(p for row in rows[g::split] for p in row)))
    slots: dict[int, int] = {}
    for group in groups:
        for page, n in Counter(group.pages).items():
            slots[page] = max(slots.get(page, 0), n)
    stride = sum(page * n for page, n in slots.items())
    return V4Layout(block_size, tuple(groups), tuples, stride, full_pages)
