"""The profile of a generated checkpoint at a path: what dsv4serve writes next to a layer cut, so that
`dsv4serve up PROFILE.yaml --gpus 1` serves it with the exact figures of its own files.

It extends the built-in profile of the architecture (flash-preview, pro-preview: 43 or 61 layers + one
MTP layer) and overrides what the cut changes: the path, the layers and their compress ratios, the
exact weights and shards, the MTP layer's bytes, the routed experts' bytes, the parameter counts.
"""

from __future__ import annotations

import math
from pathlib import Path

from dsv4serve.weights.v4ckpt import layout
from dsv4serve.weights.v4ckpt.spec import V4Spec

GiB = 2**30


def sizes(spec: V4Spec) -> dict[str, int]:
    """Bytes of the checkpoint's files by kind, computed from the layout (nothing is written)."""
    plan = layout.shards(spec)
    by_part = dict(zip(layout.parts(spec), plan, strict=True))
    experts = sum(
        x.nbytes
        for group in layout.parts(spec).values()
        for x in group
        if ".experts." in x.name and ".shared_experts." not in x.name and not x.name.startswith("mtp.")
    )
    return {
        "weights_bytes": layout.weights_bytes(plan),
        "shards": len(plan),
        "mtp_bytes": sum(s.file_bytes for part, s in by_part.items() if part.startswith("mtp.")),
        "expert_weights_bytes": experts,
    }


def profile_for(spec: V4Spec, path: Path) -> dict:
    """The profile (a YAML-ready dict) of spec's checkpoint written at path."""
    if not spec.profile:
        raise ValueError(f"{spec.name} has no built-in profile to extend")
    size = sizes(spec)
    total, active = layout.param_counts(spec)
    loaded = size["weights_bytes"] - size["mtp_bytes"]  # vLLM loads the MTP layer only for --spec mtp
    layers = spec.num_hidden_layers
    what = f"{spec.cut_from} cut to {layers} layers" if spec.cut_from else spec.name
    return {
        "name": spec.name,
        "description": f"DeepSeek-V4 {what}: the true per-layer shape, random weights (generated)",
        "extends": spec.profile,
        "model": {
            "repo": None,
            "revision": None,
            "path": str(Path(path).resolve()),
            "total_params": total,
            "active_params": active,
            "layers": layers,
            "attention_heads": spec.num_attention_heads,
            "weights_bytes": size["weights_bytes"],
            "shards": size["shards"],
            "expert_weights_bytes": size["expert_weights_bytes"],
            "kv_cache": {"compress_ratios": list(spec.layer_ratios)},
            "draft": {"weights_bytes": size["mtp_bytes"]},
        },
        # one GPU holds a cut of up to a GPU's memory: its weights and room for vLLM's overhead and cache
        "hardware": [{"gpus": 1, "min_vram_gib": math.ceil(loaded / GiB) + 16, "tensor_parallel_size": 1}],
    }


def write_profile(spec: V4Spec, checkpoint: Path, out: Path) -> Path:
    """Write profile_for(spec, checkpoint) as YAML to out; returns out."""
    import yaml

    body = yaml.safe_dump(profile_for(spec, checkpoint), sort_keys=False, default_flow_style=None, width=100)
    out = Path(out)
    out.write_text(f"# written by dsv4serve (scripts/make_v4_checkpoint.py) for {checkpoint}\n{body}")
    return out
