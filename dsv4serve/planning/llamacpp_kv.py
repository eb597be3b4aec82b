"""llama.cpp's memory beside the weights (pure): DeepSeek-V4's KV cache at `-c`, checkpoints, buffers."""

from __future__ import annotations

import math

from dsv4serve.hardware.inventory import MiB

PAD = 256  # llama.cpp pads every KV cache to 256 cells
N_UBATCH = 512  # llama-server's default physical batch
F16 = 2
F32 = 4
CSA, HCA = 4, 128
# What the process holds besides weights, KV and compute buffers (tests/test_engines_live.py checks
# the KV figures against llama-server's own log, and the compute bound).
RUNTIME_BYTES = 256 * MiB
# llama-server keeps up to 32 context checkpoints per slot in RAM (the sliding-window KV and compressor
# states of a point in the conversation): at most the context-independent part of the cache, each.
CHECKPOINTS = 32
# Compute buffers (activations of one n_ubatch batch): llama.cpp sizes them from the graph. A bound that
# grows with the context (the indexer scores ctx/4 entries per token of the batch). Measured with
# tiny-v4 (llama-server 0.5.0, CPU, -lv 4 "compute buffer size"): 79.6 MiB at -c 4096, 141.8 MiB at
# 65,536, 384.1 MiB at 262,144, i.e. ~75 MiB + 1,292 B/token; the base here leaves room for a real
# vocabulary's logits (Flash: 512 x 129,280 x 4 B = 252 MiB).
COMPUTE_BASE_BYTES = 512 * MiB
COMPUTE_PER_TOKEN_BYTES = 1536  # x context


def kv_bytes(kv_cache, context: int) -> int:
    """llama_kv_cache_dsv4's buffers at `-c context`, one slot (f16 caches, f32 compressor states)."""
    d, i, window = kv_cache.head_dim, kv_cache.index_head_dim, kv_cache.sliding_window
    raw_cells = _pad(min(context, window + N_UBATCH))
    csa_cells = _pad(max(1, math.ceil(context / CSA)))
    hca_cells = _pad(max(1, math.ceil(context / HCA)))
    total = 0
    for ratio in kv_cache.compress_ratios:
        total += raw_cells * d * F16  # the raw sliding-window K of every layer
        if ratio == CSA:
            total += csa_cells * d * F16 + csa_cells * i * F16  # compressed K, indexer keys
            total += 2 * (2 * d) * (2 * CSA) * F32 + 2 * (2 * i) * (2 * CSA) * F32  # kv + score states
        elif ratio == HCA:
            total += hca_cells * d * F16 + 2 * d * HCA * F32
    return total


def checkpoint_bytes(kv_cache) -> int:
    """One context checkpoint at most: every layer's sliding-window K and the compressor states."""
    d, i, window = kv_cache.head_dim, kv_cache.index_head_dim, kv_cache.sliding_window
    total = 0
    for ratio in kv_cache.compress_ratios:
        total += _pad(window + N_UBATCH) * d * F16
        if ratio == CSA:
            total += 2 * (2 * d) * (2 * CSA) * F32 + 2 * (2 * i) * (2 * CSA) * F32
        elif ratio == HCA:
            total += 2 * d * HCA * F32
    return total


def host_overhead(profile) -> int:
    """RAM the server holds besides weights, KV and compute buffers: the process, its checkpoints."""
    return RUNTIME_BYTES + CHECKPOINTS * checkpoint_bytes(profile.model.kv_cache)


def _pad(cells: int) -> int:
    return -(-cells // PAD) * PAD


def compute_bytes(context: int) -> int:
    return COMPUTE_BASE_BYTES + COMPUTE_PER_TOKEN_BYTES * context
