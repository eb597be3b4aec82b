"""DeepSeek-V4's KV cache as vLLM lays it out (FlashMLA path, fp8_ds_mla entries), per release, as data.

From the compress ratios this derives the KV objects each layer registers (and a draft's layers), vLLM's
grouping of them into one shared block pool, the bytes one block id costs (the stride), the blocks a
sequence holds, the start-up check for max_model_len, what a pool of a given size holds, and what vLLM
logs about that pool ("GPU KV cache size", "Maximum concurrency"). Per-layer pages are the same in every
release; the grouping, the start-up check and the logged concurrency are not (releases.py): 0.26 pads
and sums page sizes (shared/facts/deepseek-v4-kv-cache.md), 0.27+ packs groups block-outermost, 0.29+
checks stride x pool pages after a null block (shared/facts/vllm-versions-v4.md). Every spec has one KV
head and none is divided by TP, so every figure here is per GPU at any TP size. tests/test_kv_vllm.py
runs the installed vLLM's own planning code on the same specs and asserts the same figures.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from dsv4serve.engines.vllm.releases import DEFAULT, Release


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
GiB = 1 << 30


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
    layer_tuples: int  # layer tuples (0.26: _approximate_gcd of the groups' layer counts; 0.27+: repeats)
    stride: int  # bytes per block id (0.26: page x widest use per page size; 0.27+: largest group's sum)
    full_pages: tuple[int, ...]  # distinct page sizes of the full group, largest first
    release: Release = DEFAULT

    @property
    def bytes_per_token(self) -> float:
        """Long-context bytes per token: what one more full block of 256 tokens costs."""
        return self.stride / self.block_size

    @property
    def reserved(self) -> int:
        """Bytes held back before the start-up check: 0.29+ reserves the null block (one stride)."""
        return self.stride if self.release.pool_startup_check else 0

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

    def request_pages(self, length: int, in_flight: int) -> int:
        """Blocks vLLM counts for one request of `length` with `in_flight` tokens in flight: every
        group's (_max_memory_usage_bytes_from_groups, get_max_concurrency_for_kv_cache_config)."""
        return sum(self.group_blocks(g, length, in_flight) for g in self.groups)

    @property
    def fixed_blocks_per_sequence(self) -> int:
        """Blocks a long decoding sequence holds beyond its ceil(L / block_size) full blocks."""
        return self.sliding_blocks(1 << 40)

    def sequence_blocks(self, length: int) -> int:
        """Blocks one decoding sequence of `length` tokens holds."""
        return _cdiv(length, self.block_size) + self.sliding_blocks(length)

    def startup_need(self, max_model_len: int, in_flight_tokens: int) -> int:
        """Bytes vLLM's start-up check demands for one max_model_len request with `in_flight_tokens` in
        flight (kv_cache_utils.py _max_memory_usage_bytes_from_groups). 0.26-0.28: the pages x the
        widest group's layers per page size x the bytes of one tuple of the full group's page sizes;
        0.29+: the pages x the stride (and `reserved`, the null block, must be there besides)."""
        pages = self.request_pages(max_model_len, in_flight_tokens)
        if self.release.pool_startup_check:
            return pages * self.stride
        widest = max(g.max_layers_per_page() for g in self.groups)
        return pages * widest * sum(self.full_pages)

    def vllm_report(self, num_blocks: int, max_model_len: int, in_flight_tokens: int) -> VllmKvReport:
        """What vLLM logs for a pool of `num_blocks` block ids: "KV cache size: S tokens" and "Maximum
        concurrency for max_model_len tokens per request: X x" (kv_cache_utils.py get_kv_cache_capacity).

        0.27+: X = num_blocks / the sum over groups of the blocks one max_model_len request holds
        (get_max_concurrency_for_kv_cache_config: every group draws from the one pool).
        0.26: X = num_blocks / cdiv(sum over groups of blocks x the group's page sum, the full group's
        page sum) (kv_cache_utils.py 937-957): a DeepSeek-V4 group is a UniformTypeKVCacheSpecs whose
        page_size_bytes is the sum of its layers' (padded) pages, so 0.26 weighs each group's blocks by
        its page sum over the full group's, although in the shared pool every block id costs a whole
        stride. T = 2 x 8192 reproduces the facts' Flash 10.31x / 10.8M and Pro 7.20x / 7.5M per
        100 GiB at 1M. S = int(X x max_model_len) in both."""
        if self.release.unweighted_concurrency:
            per_request = self.request_pages(max_model_len, in_flight_tokens)
        else:
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
        blocks = max(pool_bytes, 0) // self.stride  # get_kv_cache_config_from_groups: available // stride
        return KvCapacity(
            blocks=blocks,
            tokens=blocks * self.block_size,
            max_len_sequences=blocks // self.sequence_blocks(max_model_len),
            vllm=self.vllm_report(blocks, max_model_len, in_flight),
        )

    def log_lines(self, report: VllmKvReport, max_model_len: int, device: str = "GPU") -> tuple[str, ...]:
        """The lines this release prints for `report` (kv_log_lines)."""
        return kv_log_lines(self.release, report.tokens, report.max_concurrency, max_model_len, device)


def kv_log_lines(
    release: Release, tokens: int, concurrency: float, max_model_len: int, device: str = "GPU"
) -> tuple[str, ...]:
    """vLLM's KV-size lines: 0.26-0.27 two, 0.28-0.29 one, 0.30+ one naming the device ("CPU KV cache
    size" on the CPU build; kv_cache_utils.py update_kv_cache_capacity)."""
    size = f"KV cache size: {tokens:,} tokens"
    most = f"Maximum concurrency for {max_model_len:,} tokens per request: {concurrency:.2f}x"
    if release.kv_log == "two-lines":
        return (f"GPU {size}", most)
    return (f"{device if release.kv_log == 'device' else 'GPU'} {size}, {most}",)


@dataclass(frozen=True)
class VllmKvReport:
    """vLLM's own capacity figures for one pool (see V4Layout.vllm_report)."""

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


def in_flight_tokens(
    max_num_batched_tokens: int | None,
    release: Release = DEFAULT,
    pipeline_parallel_size: int = 1,
    async_scheduling: bool = True,
) -> int:
    """Tokens in flight at once in vLLM's start-up check: VllmConfig.max_in_flight_tokens =
    max_concurrent_batches x max_num_batched_tokens. Async scheduling (the default; not with the Ray
    executor) runs 2 batches at PP 1; PP > 1 runs PP batches, and PP + 1 on the V2 model runner (0.29+)."""
    pp = max(1, pipeline_parallel_size)
    if async_scheduling and release.v2_model_runner:
        batches = pp + 1
    elif async_scheduling and pp == 1:
        batches = CONCURRENT_BATCHES
    else:
        batches = pp
    return batches * (max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS)


def default_batched_tokens(release: Release, gpu_memory: int, gpu_name: str = "") -> int:
    """vLLM's API-server max_num_batched_tokens for a GPU of `gpu_memory` bytes (CUDA's total): 16384
    on >= 160 GiB from 0.28 (B200, B300, GB200, GB300), 8192 on >= 70 GiB except A100 (H100, H200),
    else 2048 (engine/arg_utils.py _get_default_max_num_batched_tokens, read in 0.32; its A100 rule
    cites vllm PR 17885, older than 0.26)."""
    if gpu_memory >= 160 * GiB and release.big_gpu_batched_tokens:
        return 16384
    if gpu_memory >= 70 * GiB and "a100" not in gpu_name.lower():
        return DEFAULT_MAX_NUM_BATCHED_TOKENS
    return 2048


def layer_specs(kv: KvCache, block_size: int, draft_layers: int = 0) -> tuple[CacheSpec, ...]:
    """Every KV object the layers register, in layer order; then a speculative draft's layers (MTP 1,
    DSpark 3), each SWA-only: vLLM's V4 attention gives layer ids >= num_hidden_layers ratio 1."""
    swa_page = _round_up(SWA_BLOCK * ENTRY_BYTES, PAGE_ALIGN)
    index_entry = kv.index_head_dim + kv.index_head_dim // 128 * INDEX_SCALE_BYTES
    specs = []
    for i, ratio in enumerate((*kv.compress_ratios, *[1] * draft_layers)):
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


@functools.lru_cache(maxsize=64)
def v4_layout(
    kv: KvCache, block_size: int = 256, release: Release = DEFAULT, draft_layers: int = 0
) -> V4Layout:
    """Group the specs as `release` does (0.26: padded, _padded_layout; 0.27+: packed, _packed_layout)."""
    specs = layer_specs(kv, block_size, draft_layers)
    full = [s.page for s in specs if s.window is None]
    if not full:
        raise ValueError("a deepseek_v4 cache needs at least one compressed layer (ratio 4 or 128)")
    full_pages = tuple(sorted(set(full), reverse=True))
    if release.packed_layout:
        groups, tuples = _packed_layout(specs)
        stride = max(sum(g.pages) for g in groups)  # _get_kv_cache_bytes_per_block: the largest group
    else:
        groups, tuples = _padded_layout(specs, block_size, full_pages)
        slots: dict[int, int] = {}
        for group in groups:
            for page, n in Counter(group.pages).items():
                slots[page] = max(slots.get(page, 0), n)
        stride = sum(page * n for page, n in slots.items())
    return V4Layout(block_size, tuple(groups), tuples, stride, full_pages, release)


def _padded_layout(
    specs: tuple[CacheSpec, ...], block_size: int, full_pages: tuple[int, ...]
) -> tuple[list[CacheGroup], int]:
    """vLLM 0.26 (kv_cache_utils.py group_and_unify_kv_cache_specs 1525,
    _get_kv_cache_groups_uniform_groups 1603, _get_kv_cache_config_packed 1306): one full group, sliding
    groups by (block, window) split into layer tuples, each sliding page padded to a full-group page."""
    full = [s.page for s in specs if s.window is None]
    sliding: dict[tuple[int, int], list[CacheSpec]] = {}
    for s in specs:
        if s.window is not None:
            sliding.setdefault((s.block, s.window), []).append(s)
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
    return groups, tuples


def _packed_layout(specs: tuple[CacheSpec, ...]) -> tuple[list[CacheGroup], int]:
    """vLLM 0.27+ (kv_cache_utils.py _get_packed_kv_cache_groups, read in 0.32): layers bucketed by
    type (the full-attention ones; sliding ones by block and window), pages unpadded. A bucket with as
    many layers of each page size is a repeating pattern; those are split into groups of the same
    number of repeats (_approximate_gcd, at least the largest mixed-size pattern's), the others stay
    whole. Returns the groups (the full one first) and the repeats per group (0: none split)."""
    buckets: dict[tuple[int, int | None], dict[int, list[CacheSpec]]] = {}
    for s in specs:  # insertion order: a bucket's place is its first layer's
        buckets.setdefault((s.block, s.window), {}).setdefault(s.page, []).append(s)

    def balanced(pages: dict[int, list[CacheSpec]]) -> bool:
        return len({len(v) for v in pages.values()}) == 1

    def per_page(pages: dict[int, list[CacheSpec]]) -> int:
        return max(len(v) for v in pages.values())

    floor = max((per_page(p) for p in buckets.values() if balanced(p) and len(p) > 1), default=0)
    repeats = (
        approximate_gcd([per_page(p) for p in buckets.values() if balanced(p)], lower_bound=floor)
        if floor
        else 0
    )

    def split(pages: dict[int, list[CacheSpec]]) -> int:
        return _cdiv(per_page(pages), repeats) if balanced(pages) and repeats else 1

    def is_state(key: tuple[int, int | None]) -> bool:  # sliding buckets when nothing repeats
        return not repeats and key[1] is not None

    def widest(pages: dict[int, list[CacheSpec]], n: int) -> int:
        return sum(_cdiv(len(v), n) * page for page, v in pages.items())

    anchor = max(
        widest(p, sum(map(len, p.values())) if is_state(k) else split(p)) for k, p in buckets.items()
    )
    groups: list[CacheGroup] = []
    for key, pages in buckets.items():
        n = split(pages)
        if anchor and is_state(key):  # a state group holds at most what a block already fits
            first = next(iter(pages))
            n = max(n, _cdiv(sum(map(len, pages.values())), max(anchor // first, 1)))
        if n == 1:
            groups.append(CacheGroup(key[0], key[1], tuple(s.page for v in pages.values() for s in v)))
            continue
        rows = list(zip(*pages.values(), strict=True))  # one repeat of the pattern per row (balanced)
        for i in range(n):
            groups.append(CacheGroup(key[0], key[1], tuple(s.page for row in rows[i::n] for s in row)))
    groups.sort(key=lambda g: g.window is not None)  # the full group first (stable otherwise)
    return groups, repeats
