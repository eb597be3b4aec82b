"""The tiny checkpoint: a DeepSeek-V3-architecture model with random weights, made offline in a second.

Pure Python (no torch, no numpy): safetensors is written by hand, the tokenizer is a byte-level BPE
with no merges. Same spec -> same bytes, so the cache directory is named by a hash of the spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dsv4serve.errors import DownloadError, ProfileError

GENERATOR_VERSION = 1  # bump when the bytes written for a given spec change


@dataclass(frozen=True)
class TinySpec:
    """The shape of a generated checkpoint (DeepSeek-V3: MLA attention + sigmoid-routed MoE)."""

    hidden_size: int = 256
    num_hidden_layers: int = 2
    first_k_dense_replace: int = 1
    num_attention_heads: int = 8
    # vLLM's MLA backends (CPU and GPU) want DeepSeek-V3's real MLA dimensions.
    kv_lora_rank: int = 512
    q_lora_rank: int = 64
    qk_rope_head_dim: int = 64
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128
    intermediate_size: int = 512
    moe_intermediate_size: int = 128
    n_routed_experts: int = 16
    num_experts_per_tok: int = 4
    n_group: int = 4
    topk_group: int = 2
    n_shared_experts: int = 1
    max_position_embeddings: int = 4096
    seed: int = 0


SPECS: dict[str, TinySpec] = {"tiny": TinySpec()}

# Byte-level vocabulary: ids 0-255 are the bytes, then these specials.
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>")
BOS, EOS = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_ONE_BF16 = b"\x80\x3f"  # 1.0 in bf16, little-endian
# High byte of a random weight: keep the sign bit, fix the exponent so |w| lies in [2^-7, 2^-5).
_HIGH_BYTE = bytes((b & 0x80) | 0x3C for b in range(256))


def spec_hash(spec: TinySpec) -> str:
    """Short stable hash of the spec and the generator version (names the cache directory)."""
    blob = json.dumps({"v": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_root() -> Path:
    """Where generated checkpoints live: $XDG_CACHE_HOME/dsv4serve/checkpoints (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsv4serve" / "checkpoints"


def checkpoint_dir(name: str = "tiny", root: Path | None = None) -> Path:
    """The directory ensure_checkpoint(name) uses (whether or not it exists yet)."""
    spec = _spec(name)
    return (root or cache_root()) / f"{name}-{spec_hash(spec)}"


def ensure_checkpoint(name: str = "tiny", root: Path | None = None) -> Path:
    """Return the generated checkpoint `name`, writing it first if the cache does not have it."""
    spec = _spec(name)
    final = checkpoint_dir(name, root)
    if (final / "config.json").is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        raise DownloadError(
            f"cannot write the {name} checkpoint under {final.parent}: {err.strerror or err}",
            "set XDG_CACHE_HOME to a writable directory",
        ) from err
    try:
        write_checkpoint(spec, tmp)
        # The rename is the commit point: a directory named `final` is always complete.
        os.rename(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (final / "config.json").is_file():  # another process won the race: same bytes
            return final
        raise DownloadError(
            f"cannot write the {name} checkpoint to {final}: {err.strerror or err}",
            "check free disk space and permissions of the cache directory",
        ) from err
    return final


def write_checkpoint(spec: TinySpec, dest: Path) -> Path:
    """Write config, random bf16 weights and a byte-level tokenizer into the existing directory dest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _write_json(dest / "config.json", model_config(spec))
    _write_json(
        dest / "generation_config.json", {"bos_token_id": 256, "eos_token_id": 257, "do_sample": True}
    )
    _write_json(dest / "tokenizer.json", tokenizer_json())
    _write_json(dest / "tokenizer_config.json", tokenizer_config(spec))
    _write_json(dest / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS})
    _write_safetensors(dest / "model.safetensors", tensor_shapes(spec), spec.seed)
    _write_json(dest / "dsv4serve-tiny.json", {"generator_version": GENERATOR_VERSION, "spec": asdict(spec)})
    return dest


def model_config(spec: TinySpec) -> dict:
    """config.json of a DeepseekV3ForCausalLM with sigmoid (noaux_tc) routing and no MTP layer."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_attention_heads,
        "n_shared_experts": spec.n_shared_experts,
        "n_routed_experts": spec.n_routed_experts,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "n_group": spec.n_group,
        "topk_group": spec.topk_group,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "first_k_dense_replace": spec.first_k_dense_replace,
        "moe_layer_freq": 1,
        "kv_lora_rank": spec.kv_lora_rank,
        "q_lora_rank": spec.q_lora_rank,
        "qk_rope_head_dim": spec.qk_rope_head_dim,
        "qk_nope_head_dim": spec.qk_nope_head_dim,
        "v_head_dim": spec.v_head_dim,
        "num_nextn_predict_layers": 0,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "torch_dtype": "bfloat16",
    }


def tensor_shapes(spec: TinySpec) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape), in HF DeepSeek-V3 naming."""
    h, heads = spec.hidden_size, spec.num_attention_heads
    qk_head = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    t: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("BF16", (VOCAB_SIZE, h)),
        "model.norm.weight": ("BF16", (h,)),
        "lm_head.weight": ("BF16", (VOCAB_SIZE, h)),
    }
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ("BF16", (h,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (h,))
        a = p + "self_attn."
        t[a + "q_a_proj.weight"] = ("BF16", (spec.q_lora_rank, h))
        t[a + "q_a_layernorm.weight"] = ("BF16", (spec.q_lora_rank,))
        t[a + "q_b_proj.weight"] = ("BF16", (heads * qk_head, spec.q_lora_rank))
        t[a + "kv_a_proj_with_mqa.weight"] = ("BF16", (spec.kv_lora_rank + spec.qk_rope_head_dim, h))
        t[a + "kv_a_layernorm.weight"] = ("BF16", (spec.kv_lora_rank,))
        kv_b_rows = heads * (spec.qk_nope_head_dim + spec.v_head_dim)
        t[a + "kv_b_proj.weight"] = ("BF16", (kv_b_rows, spec.kv_lora_rank))
        t[a + "o_proj.weight"] = ("BF16", (h, heads * spec.v_head_dim))
        m = p + "mlp."
        if i < spec.first_k_dense_replace:
            _add_mlp(t, m, h, spec.intermediate_size)
        else:
            t[m + "gate.weight"] = ("BF16", (spec.n_routed_experts, h))
            t[m + "gate.e_score_correction_bias"] = ("F32", (spec.n_routed_experts,))
            for e in range(spec.n_routed_experts):
                _add_mlp(t, f"{m}experts.{e}.", h, spec.moe_intermediate_size)
            _add_mlp(t, m + "shared_experts.", h, spec.moe_intermediate_size * spec.n_shared_experts)
    return t


def param_counts(spec: TinySpec) -> tuple[int, int]:
    """(total, active) parameter counts: active counts num_experts_per_tok routed experts per token."""
    total = routed = 0
    for name, (_, shape) in tensor_shapes(spec).items():
        n = 1
        for d in shape:
            n *= d
        total += n
        if ".mlp.experts." in name:
            routed += n
    active = total - routed + routed * spec.num_experts_per_tok // spec.n_routed_experts
    return total, active


def tokenizer_json() -> dict:
    """A byte-level BPE with no merges: every byte is a token, so any text round-trips."""
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    added = [
        {
            "id": 256 + i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def tokenizer_config(spec: TinySpec) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_position_embeddings,
        "chat_template": CHAT_TEMPLATE,
    }


def _spec(name: str) -> TinySpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ProfileError(
            f"unknown generated checkpoint {name!r} (model.generate)",
            f"use one of: {', '.join(sorted(SPECS))}",
        ) from None


def _add_mlp(t: dict, prefix: str, hidden: int, inter: int) -> None:
    t[prefix + "gate_proj.weight"] = ("BF16", (inter, hidden))
    t[prefix + "up_proj.weight"] = ("BF16", (inter, hidden))
    t[prefix + "down_proj.weight"] = ("BF16", (hidden, inter))


def _tensor_bytes(name: str, dtype: str, shape: tuple[int, ...], seed: int) -> bytes:
    n = 1
    for d in shape:
        n *= d
    if dtype == "F32":  # the routing bias: zero, so routing follows the random gate
        return bytes(4 * n)
    if name.endswith("norm.weight"):
        return _ONE_BF16 * n
    # Seeded per tensor by name, so the bytes do not depend on the order tensors are written in.
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little"))
    out = bytearray(2 * n)
    out[0::2] = rng.randbytes(n)  # low byte: 7 mantissa bits + the lowest exponent bit
    out[1::2] = rng.randbytes(n).translate(_HIGH_BYTE)  # high byte: sign + fixed exponent
    return bytes(out)


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], seed: int) -> None:
    width = {"BF16": 2, "F32": 4}
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(tensors)
    for name in names:
        dtype, shape = tensors[name]
        size = width[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format recommends 8-byte alignment of the data
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            dtype, shape = tensors[name]
            f.write(_tensor_bytes(name, dtype, shape, seed))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer produces)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
