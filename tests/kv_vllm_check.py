"""Run the INSTALLED vLLM's own KV-cache planning code on DeepSeek-V4 layer specs; print its figures.

    python tests/kv_vllm_check.py CASES.json OUT.json

Run in its own process (tests/test_kv_vllm.py): importing vLLM takes seconds and sets up its logging.

Each case gives a checkpoint's compress ratios (MTP/DSpark entries dropped), the draft layers to add,
max_model_len M, max_num_batched_tokens B and KV pool sizes. The specs are vLLM's own: the SWA cache,
the C4 indexer cache and the compressor states come from the cache modules' get_kv_cache_spec
(DeepseekV4SWACache, DeepseekV4IndexerCache, CompressorStateCache); the compressed MLA cache is built
with the arguments DeepseekV4Attention.get_kv_cache_spec passes (that module needs the whole model).
The cache dtype is fp8_ds_mla (what FlashMLA on SM90 turns --kv-cache-dtype fp8 into), the block 256,
the layout block-outermost (the V4 backends declare it), async scheduling on at PP 1 (the GPU API
server: 2 x B tokens in flight). A draft layer is SWA-only (vLLM gives layer ids >= num_hidden_layers
compress ratio 1). Nothing of dsv4serve's own KV model is used here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _config(directory: str):
    """A real VllmConfig around a DeepSeek-V4 config.json (dsv4serve's tiny-v4 shape: only its
    model_type and max_position_embeddings matter to the KV planning code)."""
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig

    from dsv4serve.weights.v4ckpt import spec

    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(spec.model_config(spec.get_spec("tiny-v4"), 0, 1), handle)
    model = ModelConfig(
        model=directory,
        tokenizer=directory,
        trust_remote_code=True,
        max_model_len=4096,
        skip_tokenizer_init=True,
    )
    cache = CacheConfig(block_size=256, cache_dtype="fp8_ds_mla")
    sched = SchedulerConfig(max_num_batched_tokens=8192, max_model_len=4096, is_encoder_decoder=False)
    config = VllmConfig(model_config=model, cache_config=cache, scheduler_config=sched)
    config.cache_config.kv_cache_layout = "BLHNC"  # block-outermost, as the V4 backends declare
    config.cache_config.cache_dtype = "fp8_ds_mla"
    config.scheduler_config.async_scheduling = True  # the GPU API server's default
    return config


def _specs(config, ratios: list[int], draft_layers: int, index_head_dim: int, head_dim: int, window: int):
    """{layer name: vLLM's KVCacheSpec} in the order the model registers them."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.models.deepseek_v4.attention import DeepseekV4IndexerCache
    from vllm.models.deepseek_v4.compressor import CompressorStateCache
    from vllm.v1.attention.backends.mla.sparse_swa import DeepseekV4SWACache
    from vllm.v1.kv_cache_interface import MLAAttentionSpec, get_kv_quant_mode

    config.compilation_config.static_forward_context.clear()
    cache = config.cache_config
    specs = {}
    with set_current_vllm_config(config):
        for i, ratio in enumerate([*ratios, *[1] * draft_layers]):
            r = max(1, ratio)
            p = f"model.layers.{i}.attn"
            if r == 4:  # the indexer comes first: its keys and its compressor's state
                index_entry = index_head_dim + index_head_dim // 128 * 4  # 128 fp8 + an fp32 scale
                k = DeepseekV4IndexerCache(index_entry, torch.uint8, f"{p}.indexer.k_cache", cache, 4)
                specs[k.prefix] = k.get_kv_cache_spec(config)
                s = CompressorStateCache(
                    2 * 2 * index_head_dim, torch.float32, 4, f"{p}.indexer.compressor.state"
                )
                specs[s.prefix] = s.get_kv_cache_spec(config)
            swa = DeepseekV4SWACache(head_dim, window, torch.uint8, f"{p}.swa_cache", cache)
            specs[swa.prefix] = swa.get_kv_cache_spec(config)
            if r == 1:
                continue
            # DeepseekV4Attention.get_kv_cache_spec with kv_cache_dtype fp8_ds_mla (attention.py)
            specs[p] = MLAAttentionSpec(
                block_size=cache.block_size,
                num_kv_heads=1,
                max_tp_shards=1,
                head_size=head_dim,
                dtype=torch.uint8,
                tokens_per_state=r,
                cache_dtype_str="fp8_ds_mla",
                alignment=576,
                model_version="deepseek_v4",
                kv_quant_mode=get_kv_quant_mode("fp8_ds_mla"),
                state_content_bytes=584,
            )
            coff = 2 if r == 4 else 1
            s = CompressorStateCache(2 * coff * head_dim, torch.float32, r, f"{p}.compressor.state")
            specs[s.prefix] = s.get_kv_cache_spec(config)
    return specs


class _Lines:
    """vLLM's info_once lines of kv_cache_utils, formatted as its logger formats them (%-style), every
    time: info_once logs a message only once per process, and only on the local first rank."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, msg: str, *args, **_scope) -> None:
        self.lines.append(msg % args)


def run(cases: list[dict]) -> list[dict]:
    import vllm
    from vllm.v1.core import kv_cache_utils as ku

    lines = _Lines()
    ku.logger.info_once = lines
    with tempfile.TemporaryDirectory() as directory:
        config = _config(directory)
        out = []
        for case in cases:
            config.model_config.max_model_len = case["max_model_len"]
            config.scheduler_config.max_num_batched_tokens = case["max_num_batched_tokens"]
            specs = _specs(
                config,
                case["compress_ratios"],
                case["draft_layers"],
                case["index_head_dim"],
                case["head_dim"],
                case["sliding_window"],
            )
            groups = ku.get_kv_cache_groups(config, dict(specs))
            layout = config.cache_config.get_resolved_kv_cache_layout()
            result = {
                **case,
                "vllm": vllm.__version__,
                "device": ku._kv_cache_device_name(config),
                "in_flight_tokens": config.max_in_flight_tokens,
                "stride": ku._get_kv_cache_bytes_per_block(groups, layout),
                "groups": len(groups),
                "startup_need": ku._max_memory_usage_bytes_from_groups(config, groups),
                "pools": [],
            }
            for pool in case["pools"]:
                row = {"pool": pool}
                try:
                    [kv_config] = ku.get_kv_cache_configs(config, [dict(specs)], [pool])
                except ValueError as err:  # the start-up check refused this pool
                    row.update(fits=False, error=str(err).split(".")[0])
                else:
                    before = len(lines.lines)
                    ku.update_kv_cache_capacity(config, kv_config)
                    tokens, concurrency = ku.get_kv_cache_capacity(config, kv_config)
                    row.update(
                        fits=True,
                        num_blocks=kv_config.num_blocks,
                        tokens=tokens,
                        concurrency=concurrency,
                        log=lines.lines[before:],
                    )
                result["pools"].append(row)
            out.append(result)
    return out


def main() -> int:
    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run(cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
