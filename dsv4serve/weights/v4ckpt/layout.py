"""Every tensor of a V4 checkpoint (DeepSeek-native names, dtypes, shapes) and how they fill the shards.

Pure planning, no I/O and no numpy: the flash shape's 148.66 GiB is sized here without writing a byte.
Names are the ones DeepSeek ships and vLLM's DeepseekV4ForCausalLM.hf_to_vllm_mapper renames.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from dsv4serve.weights.v4ckpt.spec import FP8_BLOCK, MXFP4_BLOCK, V4Spec

DTYPE_BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I64": 8}
ONE_BF16 = b"\x80\x3f"
# Random e2m1 codes have an rms of 2.93, FP8 codes are drawn with a std of 16 (see fill.py): the UE8M0
# scale brings each weight to a std near 1/sqrt(fan_in), so activations stay finite through 43 layers.
FP4_RMS, FP8_STD = 2.93, 16.0


@dataclass(frozen=True)
class Tensor:
    """One tensor: its safetensors entry and how its bytes are made (fill.py reads `fill`)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    fill: tuple  # ("const", pattern) | ("normal", std) | ("fp8",) | ("bytes",) | ("tid2eid", experts)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[Tensor, ...]  # in file order (sorted by name)
    header: bytes  # the 8-byte length and the JSON header, padded to 8 bytes

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return len(self.header) + self.data_bytes


def _scale_byte(fan_in: int, rms: float) -> bytes:
    """UE8M0 byte of the power of two that scales codes of this rms to std 1/sqrt(fan_in)."""
    return bytes([127 + round(math.log2(1.0 / (math.sqrt(fan_in) * rms)))])


class _Parts:
    """Collects tensors by part (embed, each layer, head, each MTP layer): one shard per part."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}
        self.current: list[Tensor] = []

    def part(self, key: str) -> None:
        self.current = self.parts.setdefault(key, [])

    def add(self, name: str, dtype: str, shape: tuple[int, ...], fill: tuple) -> None:
        self.current.append(Tensor(name, dtype, tuple(shape), fill))

    def bf16(self, name: str, shape: tuple[int, ...], std: float | None = None) -> None:
        self.add(name, "BF16", shape, ("const", ONE_BF16) if std is None else ("normal", std))

    def f32(self, name: str, shape: tuple[int, ...], std: float | None = None, value: float = 0.0) -> None:
        self.add(name, "F32", shape, ("const", struct.pack("<f", value)) if std is None else ("normal", std))

    def fp8(self, prefix: str, out_f: int, in_f: int) -> None:
        """Block-FP8 linear: .weight F8_E4M3 [out, in] and .scale F8_E8M0 [out/128, in/128] (ceil)."""
        self.add(prefix + ".weight", "F8_E4M3", (out_f, in_f), ("fp8",))
        blocks = (-(-out_f // FP8_BLOCK), -(-in_f // FP8_BLOCK))
        self.add(prefix + ".scale", "F8_E8M0", blocks, ("const", _scale_byte(in_f, FP8_STD)))

    def fp4(self, prefix: str, out_f: int, in_f: int) -> None:
        """MXFP4 expert: .weight I8 [out, in/2] (two e2m1 per byte) and .scale F8_E8M0 [out, in/32]."""
        self.add(prefix + ".weight", "I8", (out_f, in_f // 2), ("bytes",))
        scale = ("const", _scale_byte(in_f, FP4_RMS))
        self.add(prefix + ".scale", "F8_E8M0", (out_f, in_f // MXFP4_BLOCK), scale)


def _block(t: _Parts, spec: V4Spec, p: str, ratio: int, hash_routed: bool) -> None:
    """One decoder block (a layer, or the body of an MTP layer) under prefix p."""
    h, hc, hd, ql = spec.hidden_size, spec.hc_mult, spec.head_dim, spec.q_lora_rank
    mix, inv = (2 + hc) * hc, 1.0 / math.sqrt(spec.hidden_size)
    t.bf16(p + "attn_norm.weight", (h,))
    t.bf16(p + "ffn_norm.weight", (h,))
    for kind in ("attn", "ffn"):  # mHC: mixing weights, bias and the three scales per sub-block
        t.f32(p + f"hc_{kind}_fn", (mix, hc * h), std=1.0 / math.sqrt(hc * h))
        t.f32(p + f"hc_{kind}_base", (mix,))
        t.f32(p + f"hc_{kind}_scale", (3,), value=0.5)
    a = p + "attn."
    heads = spec.num_attention_heads
    t.fp8(a + "wq_a", ql, h)
    t.fp8(a + "wkv", hd, h)
    t.bf16(a + "q_norm.weight", (ql,))
    t.bf16(a + "kv_norm.weight", (hd,))
    t.fp8(a + "wq_b", heads * hd, ql)
    t.fp8(a + "wo_a", spec.o_groups * spec.o_lora_rank, heads * hd // spec.o_groups)
    t.fp8(a + "wo_b", h, spec.o_groups * spec.o_lora_rank)
    t.f32(a + "attn_sink", (heads,))
    if ratio > 1:  # the KV compressor: C4 keeps two overlapping windows (coff 2), C128 one
        coff = 2 if ratio == 4 else 1
        _compressor(t, a + "compressor.", ratio, coff * hd, hd, h, inv)
    if ratio == 4:  # CSA's lightning indexer picks index_topk compressed entries per query
        ix, ihd = a + "indexer.", spec.index_head_dim
        t.fp8(ix + "wq_b", spec.index_n_heads * ihd, ql)
        t.bf16(ix + "weights_proj.weight", (spec.index_n_heads, h), std=inv)
        _compressor(t, ix + "compressor.", 4, 2 * ihd, ihd, h, inv)
    f, experts, inter = p + "ffn.", spec.n_routed_experts, spec.moe_intermediate_size
    t.bf16(f + "gate.weight", (experts, h), std=inv)
    if hash_routed:  # the first num_hash_layers route by token id
        t.add(f + "gate.tid2eid", "I64", (spec.vocab_size, spec.num_experts_per_tok), ("tid2eid", experts))
    else:
        t.f32(f + "gate.bias", (experts,))
    for e in range(experts):
        t.fp4(f"{f}experts.{e}.w1", inter, h)
        t.fp4(f"{f}experts.{e}.w3", inter, h)
        t.fp4(f"{f}experts.{e}.w2", h, inter)
    shared = inter * spec.n_shared_experts
    t.fp8(f + "shared_experts.w1", shared, h)
    t.fp8(f + "shared_experts.w3", shared, h)
    t.fp8(f + "shared_experts.w2", h, shared)


def _compressor(t: _Parts, c: str, ratio: int, width: int, out: int, h: int, inv: float) -> None:
    t.f32(c + "ape", (ratio, width), std=0.02)
    t.bf16(c + "wkv.weight", (width, h), std=inv)
    t.bf16(c + "wgate.weight", (width, h), std=inv)
    t.bf16(c + "norm.weight", (out,))


def _head(t: _Parts, spec: V4Spec, p: str) -> None:
    """The final norm and the mHC head that folds the hc_mult streams back into one."""
    h, hc = spec.hidden_size, spec.hc_mult
    t.bf16(p + "norm.weight", (h,))
    t.f32(p + "hc_head_fn", (hc, hc * h), std=1.0 / math.sqrt(hc * h))
    t.f32(p + "hc_head_base", (hc,))
    t.f32(p + "hc_head_scale", (1,), value=0.5)


def parts(spec: V4Spec) -> dict[str, list[Tensor]]:
    """Tensors by part, in shard order: embed, layers.0..N-1, head (+ norm, hc_head), mtp.0..M-1."""
    t, h = _Parts(), spec.hidden_size
    t.part("embed")
    t.bf16("embed.weight", (spec.vocab_size, h), std=0.5)
    for i in range(spec.num_hidden_layers):
        t.part(f"layers.{i}")
        _block(t, spec, f"layers.{i}.", spec.compress_ratios[i], i < spec.num_hash_layers)
    t.part("head")
    t.bf16("head.weight", (spec.vocab_size, h), std=1.0 / math.sqrt(h))
    _head(t, spec, "")
    for j in range(spec.num_nextn_predict_layers):  # MTP: vLLM loads it only for speculative decoding
        t.part(f"mtp.{j}")
        p = f"mtp.{j}."
        t.fp8(p + "e_proj", h, h)
        t.fp8(p + "h_proj", h, h)
        t.bf16(p + "enorm.weight", (h,))
        t.bf16(p + "hnorm.weight", (h,))
        _head(t, spec, p)
        _block(t, spec, p, spec.compress_ratios[spec.num_hidden_layers + j], False)
    return t.parts


def shards(spec: V4Spec) -> list[Shard]:
    """One shard per part, named like the hub's (model-00001-of-00046.safetensors), headers built."""
    groups = list(parts(spec).values())
    n = len(groups)
    out = []
    for k, group in enumerate(groups, start=1):
        ordered = tuple(sorted(group, key=lambda x: x.name))
        out.append(Shard(f"model-{k:05d}-of-{n:05d}.safetensors", ordered, _header(ordered)))
    return out


def _header(tensors: tuple[Tensor, ...]) -> bytes:
    head: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for x in tensors:
        head[x.name] = {"dtype": x.dtype, "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    blob = json.dumps(head, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # 8-byte alignment of the data, as safetensors recommends
    return struct.pack("<Q", len(blob)) + blob


def index_json(plan: list[Shard]) -> dict:
    """model.safetensors.index.json: total tensor bytes and the shard of every tensor."""
    weight_map = {x.name: s.file for s in plan for x in s.tensors}
    total = sum(s.data_bytes for s in plan)
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def weights_bytes(plan: list[Shard]) -> int:
    """Bytes of all *.safetensors files: the profile's model.weights_bytes."""
    return sum(s.file_bytes for s in plan)


def param_counts(spec: V4Spec) -> tuple[int, int]:
    """(total, active) parameters as DeepSeek counts them (Flash: 284B / 13B): without the MTP layers.

    FP4 bytes hold two parameters; scales and tid2eid are not parameters; active counts
    num_experts_per_tok of the routed experts.
    """
    total = routed = 0
    for part, group in parts(spec).items():
        if part.startswith("mtp."):
            continue
        for x in group:
            if x.dtype in ("F8_E8M0", "I64"):
                continue
            n = math.prod(x.shape) * (2 if x.dtype == "I8" else 1)
            total += n
            if ".experts." in x.name and ".shared_experts." not in x.name:
                routed += n
    return total, total - routed + routed * spec.num_experts_per_tok // spec.n_routed_experts
