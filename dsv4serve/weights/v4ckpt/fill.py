"""The bytes of each tensor: a small seeded random block per kind, tiled, written in a stream.

A 148.66 GiB checkpoint is written at the speed of the disk: numpy makes a few 1 MiB blocks once, and
every tensor is that block repeated from a name-dependent offset. Same seed and name -> same bytes.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from dsv4serve.weights.v4ckpt.layout import FP8_STD, Tensor

# A multiple of 8 (every dtype's width) that is no power of two, so the rows of a tiled matrix differ.
BLOCK_BYTES = (1 << 20) + 104


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def _e4m3_table():
    """The 127 non-negative finite float8_e4m3fn values, ascending (code 0x7F is NaN)."""
    import numpy as np

    codes = np.arange(0x7F)
    exp, man = codes >> 3, (codes & 7).astype(np.float64)
    return np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp - 7))


def to_e4m3(x):
    """float -> float8_e4m3fn codes (nearest, saturating at 448)."""
    import numpy as np

    table = _e4m3_table()
    a = np.minimum(np.abs(x), 448.0)
    hi = np.clip(np.searchsorted(table, a), 1, len(table) - 1)
    code = np.where(a - table[hi - 1] <= table[hi] - a, hi - 1, hi).astype(np.uint8)
    return code | ((x < 0).astype(np.uint8) << 7)


def to_bf16(x):
    """float32 -> bfloat16 bits (round to nearest even)."""
    import numpy as np

    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


class Filler:
    """Writes tensors' bytes; keeps one block per (dtype, fill) kind, made on first use."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._blocks: dict[tuple, memoryview] = {}

    def write(self, out: BinaryIO, t: Tensor) -> None:
        kind = t.fill[0]
        if kind == "tid2eid":
            out.write(self._tid2eid(t))
            return
        block = self._block(t.dtype, t.fill)
        # Constant fills start at 0 (the pattern stays aligned); random ones at a name-dependent offset.
        start = 0 if kind == "const" else (_digest(self.seed, t.name) % (BLOCK_BYTES // 8)) * 8
        _tile(out, block, start, t.nbytes)

    def _block(self, dtype: str, fill: tuple) -> memoryview:
        key = (dtype, fill)
        if key not in self._blocks:
            self._blocks[key] = memoryview(self._make(dtype, fill))
        return self._blocks[key]

    def _make(self, dtype: str, fill: tuple) -> bytes:
        import numpy as np

        if fill[0] == "const":
            return fill[1] * (BLOCK_BYTES // len(fill[1]))
        rng = np.random.default_rng(_digest(self.seed, dtype, *fill))
        if fill[0] == "bytes":  # MXFP4: any byte is two valid e2m1 codes
            return rng.integers(0, 256, BLOCK_BYTES, dtype=np.uint8).tobytes()
        if fill[0] == "fp8":
            return to_e4m3(rng.standard_normal(BLOCK_BYTES) * FP8_STD).tobytes()
        std = fill[1]
        if dtype == "BF16":
            return to_bf16(rng.standard_normal(BLOCK_BYTES // 2, dtype=np.float32) * std).tobytes()
        if dtype == "F32":
            return (rng.standard_normal(BLOCK_BYTES // 4, dtype=np.float32) * std).astype("<f4").tobytes()
        raise ValueError(f"no random fill for {dtype}")

    def _tid2eid(self, t: Tensor) -> bytes:
        """Hash routing table: top-k distinct experts per token id (consecutive from a random start)."""
        import numpy as np

        vocab, k = t.shape
        experts = t.fill[1]
        start = np.random.default_rng(_digest(self.seed, t.name)).integers(0, experts, vocab)
        return ((start[:, None] + np.arange(k)) % experts).astype("<i8").tobytes()


def _tile(out: BinaryIO, block: memoryview, start: int, nbytes: int) -> None:
    """Write nbytes of the block repeated, beginning at offset start."""
    first = block[start : start + nbytes]
    out.write(first)
    left = nbytes - len(first)
    while left >= len(block):
        out.write(block)
        left -= len(block)
    if left:
        out.write(block[:left])
