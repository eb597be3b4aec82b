"""The generated V4 checkpoints against the INSTALLED vLLM's own DeepSeek-V4 code (tests/v4_vllm_check.py):
its model class built on the meta device, its weight mapper, stacking table and loaders, its chat
encoding. A vLLM release that renames, restacks or reshapes what it loads fails here.

Slow: each check imports vLLM in a fresh process (it initialises vLLM's distributed state).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4serve.weights import v4ckpt
from dsv4serve.weights.v4ckpt import layout, spec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _check(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "v4_vllm_check.py"), *args, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0 and out.is_file(), done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_v4(tmp_path_factory) -> Path:
    return v4ckpt.make(spec.TINY_V4, tmp_path_factory.mktemp("v4") / "tiny-v4").path


def test_tiny_v4_loads_into_vllm_s_v4_model_and_tokenizes_like_v4(tiny_v4, tmp_path):
    report = _check(tmp_path, str(tiny_v4), "--mutations")
    assert report["model_class"].startswith("vllm.models.deepseek_v4."), report["model_class"]
    assert report["problems"] == []
    # 243 tensors, of which the MTP layer's (mtp.0.*, not its scales) vLLM drops without a speculative config
    mtp = [t for t in layout.parts(spec.TINY_V4)["mtp.0"] if not t.name.endswith(".scale")]
    assert report["params"] > 70 and report["tensors"] == 243 and report["dropped_by_mapper"] == len(mtp)
    # The check can fail: each known breakage alone is reported.
    assert report["mutations"] and all(n > 0 for n in report["mutations"].values()), report["mutations"]
    tok = report["tokenizer"]
    assert tok["len"] == tok["vocab_size"] == 512
    assert tok["bos"][0] == tok["bos"][1] and tok["eos"][0] == tok["eos"][1]
    # Every special token vLLM's V4 encoding, renderer and parsers use is one token of ours.
    assert len(tok["specials"]) >= 15 and all(len(ids) == 1 for ids in tok["specials"].values()), tok[
        "specials"
    ]
    for token in ("<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "｜DSML｜"):
        assert tok["chat_has"][token], token  # the thinking + tools chat prompt carries them as single ids
    assert tok["chat_ids_head"][0] == tok["bos"][0] and tok["dsml_in_text"]
    assert tok["chat_roundtrip"] and tok["plain_roundtrip"] and tok["plain_starts_with_bos"]
    assert tok["max_id_decodes"]


def test_flash_plan_loads_into_vllm_s_v4_model(tmp_path):
    report = _check(tmp_path, "--shape", "flash")
    assert report["problems"] == []
    mtp = [t for t in layout.parts(spec.FLASH)["mtp.0"] if not t.name.endswith(".scale")]
    assert report["dropped_by_mapper"] == len(mtp)  # vLLM loads the MTP layer only for speculative decoding
    assert report["tensors"] == sum(len(g) for g in layout.parts(spec.FLASH).values())


def test_tiny_v4_values_are_finite_and_scaled(tiny_v4):
    import torch
    from safetensors.torch import load_file

    t = load_file(str(tiny_v4 / "model-00003-of-00006.safetensors"))  # layer 1: CSA, indexer, experts
    for name, value in t.items():
        if value.dtype != torch.float8_e8m0fnu:
            assert torch.isfinite(value.float()).all(), name
    w, s = t["layers.1.attn.wq_b.weight"].float(), t["layers.1.attn.wq_b.scale"].float()
    effective = (w * s[0, 0]).std().item()
    assert abs(effective - 1 / math.sqrt(256)) < 0.2 / math.sqrt(256)  # ~1/sqrt(fan_in)
    ids = t["layers.1.ffn.gate.bias"]
    assert ids.dtype == torch.float32 and ids.shape == (4,)
    route = load_file(str(tiny_v4 / "model-00002-of-00006.safetensors"))["layers.0.ffn.gate.tid2eid"]
    assert route.dtype == torch.int64 and int(route.min()) >= 0 and int(route.max()) < 4
    assert all(len(set(row.tolist())) == 2 for row in route)  # top-2 distinct experts per token id
