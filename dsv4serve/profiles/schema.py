"""The rules of a profile built from its mapping (profiles/fields.py): sources, ranges and cross-field
limits, each failure at the file:line where the field was written."""

from __future__ import annotations

import re
from typing import Any

from dsv4serve.engines.vllm.flags import MIN_MODEL_LEN, profile_arg_problem
from dsv4serve.engines.vllm.kv_cache import V4_BLOCK_SIZE
from dsv4serve.engines.vllm.version import check_version_text
from dsv4serve.errors import oneline
from dsv4serve.hardware.inventory import CAPABILITY_RE
from dsv4serve.profiles.document import LocatedMap, fail
from dsv4serve.profiles.engine_check import check_engine_fields
from dsv4serve.profiles.fields import cleared_required, not_a, shown, where
from dsv4serve.profiles.hub_names import valid_repo_id, valid_revision
from dsv4serve.profiles.types import (
    GENERATED,
    SPEC_CHOICES,
    SPEC_METHODS,
    STRATEGIES,
    Draft,
    HardwareRule,
    KvCache,
    Profile,
)

# Fields the planner cannot work without; the dataclasses give them 0 defaults only so that
# `extends` children may leave them out.
REQUIRED_FACTS = ("model.layers", "model.attention_heads", "model.weights_bytes")
REQUIRED_FACTS += ("model.kv_bytes_per_token", "model.max_context", "serve.max_model_len")
KV_LAYOUTS = ("deepseek_v4",)
COMPRESS_RATIOS = (0, 1, 4, 128)  # 0/1 = sliding window only, 4 = CSA (with indexer), 128 = HCA
DEEP_GEMM_WARMUPS = ("full", "relax", "skip")  # VLLM_DEEP_GEMM_WARMUP's values
# Profile fields filled by the loader, never written in YAML (`extends` is read as one name there).
LOADER_FIELDS = ("source", "origin", "extends")


def check(profile: Profile, doc: LocatedMap) -> None:
    """Rules that need more than one field's type: sources, ranges, and cross-field limits."""
    model, serve = profile.model, profile.serve

    def need(ok: bool, keys: tuple[str | int, ...], problem: str, hint: str) -> None:
        if not ok:
            path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
            raise fail(where(doc, *keys), path, problem, hint)

    sources = [k for k in ("repo", "path", "generate") if getattr(model, k)]
    cleared = doc["model"].cleared if isinstance(doc.get("model"), LocatedMap) else {}
    dropped = [k for k in ("repo", "path", "generate") if k in cleared]
    if not sources and dropped:
        raise fail(
            cleared[dropped[0]],
            f"model.{dropped[0]}",
            f"null clears the inherited {dropped[0]}, and no other source is given",
            f"add repo: owner/name or path: /local/dir next to `{dropped[0]}: null`, or remove that line",
        )
    need(
        len(sources) == 1,
        ("model", *sources[1:2]),
        f"needs exactly one of repo, path, generate; got {', '.join(sources) or 'none'}",
        "keep one: repo: owner/name (hub), path: /local/dir, or generate: tiny",
    )
    need(
        not model.revision or bool(model.repo),
        ("model", "revision"),
        "revision needs model.repo",
        "remove revision, or serve from a hub repo",
    )
    need(
        not model.repo or valid_repo_id(model.repo),
        ("model", "repo"),
        f"{oneline(model.repo, 100)!r} is not a hub repo id (owner/name)",
        "e.g. deepseek-ai/DeepSeek-V4-Flash; for a local checkpoint use model.path",
    )
    need(
        not model.revision or valid_revision(model.revision),
        ("model", "revision"),
        f"{oneline(model.revision or '', 100)!r} is not a branch, tag or commit",
        "e.g. main, v1.0 or a 40-character commit",
    )
    # After a `--` vLLM's parser reads no flag, and nothing here checks what follows: `--port ²` there
    # reached the readiness probe's int() unchecked.
    dashes = serve.extra_args.index("--") if "--" in serve.extra_args else -1
    need(
        dashes < 0,
        ("serve", "extra_args", dashes),
        "`--` ends vLLM's options: what follows would not be read as flags",
        "remove the `--`; write each vLLM flag as an item of extra_args",
    )
    bad_arg = profile_arg_problem(serve.extra_args)
    if bad_arg:
        need(False, ("serve", "extra_args", bad_arg[0]), bad_arg[1], bad_arg[2])
    need(  # an unknown name failed only at plan time, without the file
        not model.generate or model.generate in GENERATED,
        ("model", "generate"),
        f"unknown generated checkpoint {oneline(model.generate or '', 100)!r} (model.generate)",
        f"use one of: {', '.join(sorted(GENERATED))}",
    )
    need(
        serve.max_model_len >= MIN_MODEL_LEN or "max_model_len" not in doc.get("serve", {}),
        ("serve", "max_model_len"),
        f"{serve.max_model_len} is too short to serve a chat request",
        f"use at least {MIN_MODEL_LEN} tokens",
    )
    for dotted in REQUIRED_FACTS:
        section, name = dotted.split(".")
        if dotted == "model.kv_bytes_per_token" and model.kv_cache is not None:
            continue  # derived from the cache structure
        present = isinstance(doc.get(section), LocatedMap) and name in doc[section]
        if not present and isinstance(doc.get(section), LocatedMap) and name in doc[section].cleared:
            raise cleared_required(doc[section], name, section)
        need(
            present, (section, name), "missing required field", f"add {name} (see shared facts / config.json)"
        )
        need(
            getattr(getattr(profile, section), name) > 0,
            (section, name),
            "must be positive",
            "set it above 0",
        )
    need(
        CAPABILITY_RE.fullmatch(model.min_compute_capability) is not None,
        ("model", "min_compute_capability"),
        not_a(model.min_compute_capability, "a compute capability"),
        'write it quoted, like "9.0"',
    )
    need(
        model.active_params <= model.total_params,
        ("model", "active_params"),
        "exceeds model.total_params",
        "active parameters are a subset of the total",
    )
    need(
        0 < serve.gpu_memory_utilization <= 1,
        ("serve", "gpu_memory_utilization"),
        f"must be in (0, 1], got {serve.gpu_memory_utilization}",
        "a fraction of GPU memory, e.g. 0.9",
    )
    need(
        serve.max_model_len <= model.max_context,
        ("serve", "max_model_len"),
        f"{serve.max_model_len} exceeds model.max_context ({model.max_context})",
        f"lower it to at most {model.max_context}",
    )
    need(
        serve.block_size is None or serve.block_size > 0,
        ("serve", "block_size"),
        "must be positive",
        "DeepSeek-V4 needs 256",
    )
    need(  # its compressed caches split a block by the ratios (up to 128): block_size 1 divided by zero
        not model.kv_cache or serve.block_size in (None, V4_BLOCK_SIZE),
        ("serve", "block_size"),
        f"{serve.block_size}: DeepSeek-V4's KV cache needs {V4_BLOCK_SIZE}-token blocks",
        f"set block_size: {V4_BLOCK_SIZE} (or leave it out)",
    )
    need(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", profile.name) is not None,
        ("name",),
        not_a(profile.name, "a profile name"),
        "use letters, digits, '.', '_' and '-'",
    )
    if model.kv_cache is not None:
        _check_kv_cache(need, model.kv_cache, model.layers)
    if model.draft is not None:
        _check_draft(need, model.draft, model.weights_bytes, model.layers)
    _check_serve_extras(need, serve)
    check_engine_fields(need, profile)  # serve.engine, model.gguf (profiles/engine_check.py)
    need(
        not model.fallback or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model.fallback) is not None,
        ("model", "fallback"),
        f"{oneline(model.fallback, 100)!r} is not a profile name",
        "name the profile to use on older GPUs, e.g. flash-preview",
    )
    for i, rule in enumerate(profile.hardware):
        _check_rule(need, i, rule, model.attention_heads)


def _check_kv_cache(need: Any, kv: KvCache, layers: int) -> None:
    """The structured (DeepSeek-V4) cache: one known compress ratio per layer, positive sizes."""
    at = ("model", "kv_cache")
    need(
        kv.layout in KV_LAYOUTS,
        (*at, "layout"),
        f"unknown layout {shown(kv.layout)}",
        f"use {', '.join(KV_LAYOUTS)}, or drop kv_cache and give model.kv_bytes_per_token",
    )
    for i, ratio in enumerate(kv.compress_ratios):
        need(
            ratio in COMPRESS_RATIOS,
            (*at, "compress_ratios", i),
            f"compress ratio {ratio} is not one of {', '.join(map(str, COMPRESS_RATIOS))}",
            "copy compress_ratios from the checkpoint's config.json (0/1 = SWA only, 4 = CSA, 128 = HCA)",
        )
    need(
        any(r in (4, 128) for r in kv.compress_ratios),
        (*at, "compress_ratios"),
        "no compressed layer (ratio 4 or 128)",
        "a deepseek_v4 cache has CSA/HCA layers; a model without them takes model.kv_bytes_per_token",
    )
    need(
        len(kv.compress_ratios) == layers,
        (*at, "compress_ratios"),
        f"{len(kv.compress_ratios)} ratios for {layers} layers (model.layers)",
        "one ratio per layer, without the MTP layers' trailing entries",
    )
    for name in ("sliding_window", "head_dim", "index_head_dim"):
        need(getattr(kv, name) > 0, (*at, name), "must be positive", "copy it from config.json")


def _check_draft(need: Any, draft: Draft, weights: int, layers: int) -> None:
    """The speculative-decoding draft: a method vLLM knows for V4, a layer or more, a share of the weights."""
    at = ("model", "draft")
    need(
        draft.method in SPEC_METHODS,
        (*at, "method"),
        f"{oneline(draft.method, 60)!r} is not a draft method",
        f"use one of {', '.join(SPEC_METHODS)}",
    )
    need(draft.layers > 0, (*at, "layers"), "must be positive", "MTP has 1 draft layer, DSpark 3")
    need(  # the planner registers one KV layer per draft layer: 10**9 of them filled the memory
        draft.layers <= layers,
        (*at, "layers"),
        f"{draft.layers} draft layers exceed model.layers ({layers})",
        "MTP has 1 draft layer, DSpark 3",
    )
    need(
        draft.weights_bytes < weights or weights == 0,
        (*at, "weights_bytes"),
        f"{draft.weights_bytes} is not less than model.weights_bytes ({weights})",
        "the draft is a part of the checkpoint: its bytes are a share of model.weights_bytes",
    )


def _check_serve_extras(need: Any, serve: Any) -> None:
    """vLLM version floor, scheduler step size, DeepGEMM warmup mode, speculative decoding."""
    need(
        serve.speculative is None or serve.speculative in SPEC_CHOICES,
        ("serve", "speculative"),
        f"{oneline(serve.speculative or '', 60)!r} is not a speculative-decoding choice",
        f"use one of {', '.join(SPEC_CHOICES)}",
    )
    need(
        serve.speculative_tokens is None or serve.speculative_tokens > 0,
        ("serve", "speculative_tokens"),
        "must be positive",
        "draft tokens per step, e.g. 1",
    )
    need(
        serve.min_vllm_version is None or check_version_text(serve.min_vllm_version),
        ("serve", "min_vllm_version"),
        not_a(serve.min_vllm_version or "", "a version"),
        'write it quoted, like "0.20.0"',
    )
    need(
        serve.max_num_batched_tokens is None or serve.max_num_batched_tokens > 0,
        ("serve", "max_num_batched_tokens"),
        "must be positive",
        "tokens per scheduler step, e.g. 8192",
    )
    need(
        serve.deep_gemm_warmup is None or serve.deep_gemm_warmup in DEEP_GEMM_WARMUPS,
        ("serve", "deep_gemm_warmup"),
        not_a(serve.deep_gemm_warmup or "", "a warmup mode"),
        f"use one of {', '.join(DEEP_GEMM_WARMUPS)}",
    )


def _check_rule(need: Any, i: int, rule: HardwareRule, heads: int) -> None:
    """A hardware rule must describe a layout vLLM can start."""
    tp = rule.tensor_parallel_size
    need(rule.gpus > 0, ("hardware", i, "gpus"), "must be positive", "the number of GPUs this rule is for")
    need(rule.nodes > 0, ("hardware", i, "nodes"), "must be positive", "nodes of `gpus` GPUs each, e.g. 2")
    need(rule.min_vram_gib > 0, ("hardware", i, "min_vram_gib"), "must be positive", "GiB per GPU, e.g. 75")
    need(tp > 0, ("hardware", i, "tensor_parallel_size"), "must be positive", "usually the GPU count")
    total = rule.gpus * rule.nodes  # TP may span nodes (TP 16 over 2 nodes of 8)
    need(
        tp <= total and total % tp == 0,
        ("hardware", i, "tensor_parallel_size"),
        f"{tp} does not divide the {total} GPUs of hardware[{i}] (gpus x nodes)",
        "use the GPU count or a divisor of it",
    )
    need(
        rule.strategy is None or rule.strategy in STRATEGIES,
        ("hardware", i, "strategy"),
        not_a(rule.strategy or "", "a strategy"),
        f"use one of {', '.join(STRATEGIES)}",
    )
    need(
        heads % tp == 0,
        ("hardware", i, "tensor_parallel_size"),
        f"{tp} does not divide model.attention_heads ({heads})",
        "vLLM splits attention heads evenly over TP",
    )
