"""The shape of a generated DeepSeek-V4 checkpoint (DeepseekV4ForCausalLM) and its config.json.

Three shapes: `tiny-v4` (the smallest model vLLM's Hopper kernels accept; shared/recipes/vllm-gpu-v4),
`flash` and `pro` (DeepSeek-V4-Flash's and -Pro's real architectures, random weights, for load and
memory tests on GPUs). cut() keeps a true shape's per-layer dims with fewer layers: Flash's or Pro's
kernels and per-layer memory on one GPU, before the full model's GPUs exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dsv4serve.errors import ProfileError, UsageError

FP8_BLOCK = 128  # quantization_config.weight_block_size: 128x128 FP8 blocks, one UE8M0 scale each
MXFP4_BLOCK = 32  # routed experts: 32 FP4 values share one UE8M0 scale
COMPRESS_RATIOS = (0, 1, 4, 128)  # 0/1: sliding window only; 4: CSA (+ indexer); 128: HCA


@dataclass(frozen=True)
class V4Spec:
    """Dimensions of a DeepSeek-V4 checkpoint; names follow config.json."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    # One per layer, then one per MTP layer (config.json carries both; Flash ships 44 for 43 layers).
    compress_ratios: tuple[int, ...]
    num_attention_heads: int
    q_lora_rank: int
    o_lora_rank: int
    o_groups: int
    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    num_hash_layers: int
    vocab_size: int
    num_nextn_predict_layers: int = 0
    n_shared_experts: int = 1
    head_dim: int = 512  # FlashMLA's fp8_ds_mla layout: 448 nope + 64 rope; the kernels hard-code it
    qk_rope_head_dim: int = 64
    index_n_heads: int = 64  # DeepGEMM's MQA-logits kernels
    index_head_dim: int = 128  # indexer cache entry: 128 fp8 + 4 B scale
    index_topk: int = 512  # Flash 512, Pro 1024 (config.json)
    routed_scaling_factor: float = 1.5  # Flash 1.5, Pro 2.5 (config.json)
    sliding_window: int = 128
    hc_mult: int = 4  # mHC: mixing matrix (2 + hc) * hc = 24
    hc_sinkhorn_iters: int = 20
    max_position_embeddings: int = 1048576
    tp_sizes: tuple[int, ...] = (1,)  # TP sizes the shape must split evenly for (vLLM's rules)
    seed: int = 0
    profile: str = ""  # the built-in profile of this architecture (a cut's profile extends it)
    cut_from: str = ""  # a cut(): the true shape whose first layers it keeps

    @property
    def layer_ratios(self) -> tuple[int, ...]:
        """Compress ratios of the decoder layers (MTP entries dropped): what the KV planner reads."""
        return self.compress_ratios[: self.num_hidden_layers]


# The recipe's working dims (shared/recipes/vllm-gpu-v4/README.md, served on H200 by vLLM 0.26 at TP 1
# and TP 2 + EP): kept dims are what the Hopper kernels hard-code, shrunk dims are free.
TINY_V4 = V4Spec(
    name="tiny-v4",
    hidden_size=2048,  # mhc_fused_tilelang decode split-K needs hidden/8 % 256 == 0
    num_hidden_layers=3,
    # one layer of each attention kind (SWA, CSA, HCA), then the MTP layer's 0 (as Flash's config)
    compress_ratios=(0, 4, 128, 0),
    num_attention_heads=4,  # FlashMLA pads to 64 q-heads; 4 splits over TP 2
    q_lora_rank=256,
    o_lora_rank=256,
    o_groups=2,  # heads % o_groups == 0 and o_groups % TP == 0
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=256,  # 128 per rank at TP 2: whole FP8 / Marlin MXFP4 blocks
    num_hash_layers=1,  # layer 0 routes by token id (tid2eid), the others by score (noaux_tc)
    vocab_size=512,  # == the generated tokenizer's size, so every sampled id decodes
    num_nextn_predict_layers=1,  # an MTP head like Flash's: --spec mtp serves it (mtp.0.* in its own shard)
    tp_sizes=(1, 2),
)

# DeepSeek-V4-Flash's config.json (huggingface.co/deepseek-ai/DeepSeek-V4-Flash, as quoted verbatim by
# public copies: a V4-Flash benchmark's DEFAULT_DEEPSEEK_V4_FLASH_CONFIG "snapshot from .../config.json",
# and an Ascend port's validate_configuration). Tensor shapes and dtypes cross-checked against published
# safetensors header reads: model-00002-of-00046 holds layer 0 (tid2eid I64 [129280, 6], wq_a F8_E4M3
# [1024, 4096] + F8_E8M0 [8, 32], experts.N.w1 I8 [2048, 2048] + F8_E8M0 [2048, 128]);
# model-00046-of-00046 holds only mtp.0.* (1,575 tensors, e_proj/h_proj F8_E4M3 [4096, 4096]).
# Not copied: bos/eos ids (the real 0/1; ours follow the generated tokenizer, specials last).
FLASH = V4Spec(
    name="flash",
    hidden_size=4096,
    num_hidden_layers=43,
    # 2 SWA-only layers, C4/C128 alternating from layer 2, and the MTP layer's 0 (44 entries).
    compress_ratios=(0, 0, *([4, 128] * 20), 4, 0),
    num_attention_heads=64,
    q_lora_rank=1024,
    o_lora_rank=1024,
    o_groups=8,
    n_routed_experts=256,
    num_experts_per_tok=6,
    moe_intermediate_size=2048,
    num_hash_layers=3,
    vocab_size=129280,
    num_nextn_predict_layers=1,
    tp_sizes=(1, 2, 4, 8),  # the flash profile's hardware rules use TP 2, 4 and 8
    profile="flash-preview",  # the preview's layout: 43 layers + one MTP layer, no DSpark draft
)

# DeepSeek-V4-Pro's config.json (huggingface.co/deepseek-ai/DeepSeek-V4-Pro, as quoted by public copies:
# a memory estimator's MODEL_CONFIGS["deepseekv4_pro"] and a config snapshot with every key); the facts
# (shared/facts/deepseek-v4.md) agree on 61 layers, hidden 7168, 128 heads, 384 + 1 experts top-6.
# compress_ratios: 2 HCA layers, then C4/C128 alternating from layer 2, and the MTP layer's 0 (62).
PRO = V4Spec(
    name="pro",
    hidden_size=7168,
    num_hidden_layers=61,
    compress_ratios=(128, 128, *([4, 128] * 29), 4, 0),
    num_attention_heads=128,
    q_lora_rank=1536,
    o_lora_rank=1024,
    o_groups=16,
    n_routed_experts=384,
    num_experts_per_tok=6,
    moe_intermediate_size=3072,
    num_hash_layers=3,
    vocab_size=129280,
    num_nextn_predict_layers=1,
    index_topk=1024,
    routed_scaling_factor=2.5,
    tp_sizes=(1, 2, 4, 8),  # the pro profile's rules: TP 8 on one node, TP 16 over two (experts by EP)
    profile="pro-preview",
)

SHAPES: dict[str, V4Spec] = {s.name: s for s in (TINY_V4, FLASH, PRO)}
TRUE_SHAPES = ("flash", "pro")  # the shapes cut() keeps the per-layer dims of


def cut(spec: V4Spec, layers: int) -> V4Spec:
    """A true shape with its first `layers` decoder layers: their compress ratios and hash routing as in
    the original, and its MTP layers. One GPU then holds Flash's or Pro's real per-layer shape."""
    if spec.name not in TRUE_SHAPES:
        raise UsageError(
            f"--layers cuts a true shape, not {spec.name}", f"use --shape {' or --shape '.join(TRUE_SHAPES)}"
        )
    full = spec.num_hidden_layers
    if not 1 <= layers <= full:
        raise UsageError(f"--layers {layers}: {spec.name} has 1 to {full} layers", "e.g. --layers 12")
    ratios = spec.layer_ratios[:layers]
    if not any(r in (4, 128) for r in ratios):
        first = next(i for i, r in enumerate(spec.layer_ratios) if r in (4, 128)) + 1
        raise UsageError(
            f"--layers {layers}: {spec.name}'s first {layers} layers hold no compressed (CSA/HCA) layer",
            f"keep at least {first} layers",
        )
    if layers == full:
        return spec
    return replace(
        spec,
        name=f"{spec.name}-{layers}l",
        num_hidden_layers=layers,
        compress_ratios=(*ratios, *spec.compress_ratios[full:]),
        num_hash_layers=min(spec.num_hash_layers, layers),
        cut_from=spec.name,
    )


def get_spec(name: str) -> V4Spec:
    try:
        return SHAPES[name]
    except KeyError:
        raise ProfileError(
            f"unknown DeepSeek-V4 checkpoint shape {name!r}", f"use one of: {', '.join(sorted(SHAPES))}"
        ) from None


def problems(spec: V4Spec) -> list[str]:
    """Dimension rules of vLLM's V4 kernels and loaders (recipe README, vLLM 0.26 source); [] = fine."""
    out: list[str] = []

    def need(ok: bool, why: str) -> None:
        if not ok:
            out.append(why)

    layers, mtp = spec.num_hidden_layers, spec.num_nextn_predict_layers
    need(len(spec.compress_ratios) == layers + mtp, "one compress ratio per layer and per MTP layer")
    need(all(r in COMPRESS_RATIOS for r in spec.compress_ratios), "compress ratios are 0, 1, 4 or 128")
    need(spec.head_dim == 512 and spec.qk_rope_head_dim == 64, "head_dim 512 and rope 64 are fixed")
    # A shrunk shape keeps the multiple of 2048 the tiny recipe found for the mHC decode kernel; the
    # published hidden sizes (Flash 4096, Pro 7168) are what vLLM's kernels serve.
    need(
        spec.hidden_size % 2048 == 0 or spec.hidden_size in (4096, 7168),
        "hidden_size must be a multiple of 2048 (mHC decode kernel)",
    )
    need(spec.num_attention_heads % spec.o_groups == 0, "o_groups must divide the heads")
    need(spec.num_experts_per_tok <= spec.n_routed_experts, "top-k above the expert count")
    need(0 <= spec.num_hash_layers <= layers, "num_hash_layers within the layers")
    for dim in (spec.hidden_size, spec.q_lora_rank, spec.o_lora_rank, spec.moe_intermediate_size):
        need(dim % FP8_BLOCK == 0, f"{dim} is not a whole number of 128-wide FP8 blocks")
    for tp in spec.tp_sizes:
        need(spec.num_attention_heads % tp == 0, f"TP {tp} does not divide the heads")
        need(spec.num_attention_heads // tp <= 128, f"more than 128 heads per rank at TP {tp} (FlashMLA)")
        need(spec.o_groups % tp == 0, f"TP {tp} does not divide o_groups")
        need(spec.n_routed_experts % tp == 0, f"TP {tp} does not divide the routed experts")
        per_rank = spec.moe_intermediate_size // tp
        need(per_rank % FP8_BLOCK == 0, f"expert width per rank at TP {tp} is not 128-block aligned")
        need((spec.o_groups * spec.o_lora_rank // tp) % FP8_BLOCK == 0, f"wo_a rows per rank at TP {tp}")
    return out


def model_config(spec: V4Spec, bos_id: int, eos_id: int) -> dict:
    """config.json: Flash's keys and fixed values, with this spec's dimensions."""
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "compress_ratios": list(spec.compress_ratios),
        "compress_rope_theta": 160000,
        "expert_dtype": "fp4",
        "hc_eps": 1e-06,
        "hc_mult": spec.hc_mult,
        "hc_sinkhorn_iters": spec.hc_sinkhorn_iters,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "index_head_dim": spec.index_head_dim,
        "index_n_heads": spec.index_n_heads,
        "index_topk": spec.index_topk,
        "initializer_range": 0.02,
        "max_position_embeddings": spec.max_position_embeddings,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "n_routed_experts": spec.n_routed_experts,
        "n_shared_experts": spec.n_shared_experts,
        "norm_topk_prob": True,
        "num_attention_heads": spec.num_attention_heads,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "num_hash_layers": spec.num_hash_layers,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": 1,
        "num_nextn_predict_layers": spec.num_nextn_predict_layers,
        "o_groups": spec.o_groups,
        "o_lora_rank": spec.o_lora_rank,
        "q_lora_rank": spec.q_lora_rank,
        "qk_rope_head_dim": spec.qk_rope_head_dim,
        # FP8 E4M3 linears in 128x128 blocks with power-of-two (UE8M0) scales; experts follow expert_dtype.
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "scale_fmt": "ue8m0",
            "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
        },
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 16,
            "original_max_position_embeddings": 65536,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": spec.routed_scaling_factor,
        "scoring_func": "sqrtsoftplus",
        "sliding_window": spec.sliding_window,
        "swiglu_limit": 10.0,
        "tie_word_embeddings": False,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }
