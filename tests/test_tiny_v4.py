"""The generated DeepSeek-V4 checkpoints: tiny-v4 written (deterministic, atomic, matching its profile),
flash planned (size and shards of the real one, nothing written), and tiny-v4's refusal without a GPU.

Checks against the installed vLLM's own V4 code are in test_tiny_v4_vllm.py (slow: they import vLLM).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsv4serve.errors import ProfileError, UsageError
from dsv4serve.profiles.load import load_profile
from dsv4serve.weights import generated, v4ckpt
from dsv4serve.weights.v4ckpt import layout, spec, tokenizer

REPO = Path(__file__).resolve().parent.parent
# DeepSeek-V4-Flash on the hub (shared/facts/deepseek-v4.md): 148.66 GiB in 46 shards.
FLASH_BYTES, FLASH_SHARDS = 159_622_459_555, 46


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


@pytest.fixture(scope="module")
def tiny_v4(tmp_path_factory) -> Path:
    return v4ckpt.make(spec.TINY_V4, tmp_path_factory.mktemp("v4") / "tiny-v4").path


def test_tiny_v4_matches_the_profile_facts(tiny_v4):
    profile = load_profile("tiny-v4")
    model, cfg = profile.model, json.loads((tiny_v4 / "config.json").read_text())
    shards = sorted(tiny_v4.glob("*.safetensors"))
    assert sum(p.stat().st_size for p in shards) == model.weights_bytes
    parts = layout.parts(spec.TINY_V4)
    routed = [
        t
        for part, g in parts.items()
        for t in g
        if re.search(r"\.experts\.\d+\.", t.name) and not part.startswith("mtp.")
    ]
    assert sum(t.nbytes for t in routed) == model.expert_weights_bytes  # not flash's, inherited
    # the MTP head: its own last shard, the profile's draft (counted only with --spec mtp)
    assert [name for name in parts if name.startswith("mtp.")] == ["mtp.0"]
    assert shards[-1].stat().st_size == model.draft.weights_bytes and model.shards == len(shards) == 6
    assert (model.draft.method, model.draft.layers) == ("mtp", 1) and cfg["num_nextn_predict_layers"] == 1
    assert cfg["compress_ratios"] == [0, 4, 128, 0]
    assert layout.param_counts(spec.TINY_V4) == (model.total_params, model.active_params)
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (model.layers, model.attention_heads)
    assert cfg["max_position_embeddings"] == model.max_context
    kv = model.kv_cache
    assert list(kv.compress_ratios) == cfg["compress_ratios"][: cfg["num_hidden_layers"]] == [0, 4, 128]
    assert (kv.sliding_window, kv.head_dim, kv.index_head_dim) == (
        cfg["sliding_window"],
        cfg["head_dim"],
        cfg["index_head_dim"],
    )
    assert cfg["architectures"] == ["DeepseekV4ForCausalLM"] and cfg["model_type"] == "deepseek_v4"
    assert cfg["quantization_config"]["quant_method"] == "fp8" and cfg["expert_dtype"] == "fp4"


def test_tiny_v4_profile_is_flash_with_smaller_context_only():
    tiny, flash = load_profile("tiny-v4"), load_profile("flash")
    changed = {
        f.name
        for f in dataclasses.fields(flash.serve)
        if getattr(tiny.serve, f.name) != getattr(flash.serve, f.name)
    }
    assert changed == {
        "served_model_name",
        "max_model_len",
        "gpu_memory_utilization",
        "startup_timeout_s",
        "min_vllm_version",  # flash's 0.25.0 is for its DSpark release; tiny-v4 needs V4's 0.20.0
    }
    assert tiny.serve.min_vllm_version == "0.20.0"
    assert (tiny.serve.served_model_name, tiny.serve.gpu_memory_utilization) == ("tiny-v4", 0.3)
    assert tiny.serve.startup_timeout_s >= 900 and tiny.serve.max_model_len == 4096
    assert not tiny.cpu_ok and tiny.model.min_compute_capability == "9.0"
    assert [(r.gpus, r.tensor_parallel_size) for r in tiny.hardware] == [(1, 1), (2, 2)]
    assert all(r.min_vram_gib >= 20 for r in tiny.hardware)


def test_same_spec_same_bytes_whatever_the_job_count(tiny_v4, tmp_path):
    again = v4ckpt.make(spec.TINY_V4, tmp_path / "again", jobs=3).path
    assert _digest(again) == _digest(tiny_v4)
    other = v4ckpt.make(dataclasses.replace(spec.TINY_V4, seed=1), tmp_path / "seed1").path
    assert (
        _digest(other)["model-00003-of-00006.safetensors"]
        != _digest(tiny_v4)["model-00003-of-00006.safetensors"]
    )
    assert _digest(other)["config.json"] == _digest(tiny_v4)["config.json"]


def test_an_interrupted_write_leaves_nothing(tmp_path):
    def stop(name, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        v4ckpt.make(spec.TINY_V4, tmp_path / "out", on_shard=stop)
    assert list(tmp_path.iterdir()) == []  # neither the directory nor its partial sibling


def test_a_non_empty_directory_is_refused_and_a_complete_one_reused(tiny_v4, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError) as err:
        v4ckpt.make(spec.TINY_V4, tmp_path / "busy")
    assert err.value.exit_code == 2 and "not empty" in err.value.message
    assert v4ckpt.make(spec.TINY_V4, tiny_v4).reused


def test_safetensors_are_well_formed_and_quantized_like_flash(tiny_v4):
    index = json.loads((tiny_v4 / "model.safetensors.index.json").read_text())
    seen, total = {}, 0
    for path in sorted(tiny_v4.glob("*.safetensors")):
        n, header = _header(path)
        assert header.pop("__metadata__") == {"format": "pt"} and n % 8 == 0
        end = 0
        for name in sorted(header):  # contiguous, in name order, sized by dtype x shape
            entry = header[name]
            start, stop = entry["data_offsets"]
            size = math.prod(entry["shape"]) * layout.DTYPE_BYTES[entry["dtype"]]
            assert (start, stop - start) == (end, size), name
            end = stop
            assert index["weight_map"][name] == path.name
            seen[name] = (entry["dtype"], tuple(entry["shape"]))
        assert path.stat().st_size == 8 + n + end
        total += end
    # 243 tensors: the 3 layers' 180 and the MTP layer's 63
    assert index["metadata"]["total_size"] == total and len(index["weight_map"]) == len(seen) == 243
    for name, (dtype, shape) in seen.items():
        if not name.endswith(".weight") or (name[:-7] + ".scale") not in seen:
            continue
        scale_dtype, scale = seen[name[:-7] + ".scale"]
        assert scale_dtype == "F8_E8M0", name
        if ".experts." in name and ".shared_experts." not in name:  # MXFP4: 2 per byte, 1 scale per 32
            assert dtype == "I8" and scale == (shape[0], shape[1] * 2 // 32), name
        else:  # FP8 E4M3 with one scale per 128x128 block
            assert dtype == "F8_E4M3" and scale == (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)), (
                name
            )
    assert seen["layers.0.ffn.gate.tid2eid"] == ("I64", (512, 2))
    assert "layers.1.ffn.gate.tid2eid" not in seen and seen["layers.1.ffn.gate.bias"] == ("F32", (4,))


def test_tokenizer_has_every_id_and_the_v4_special_tokens(tiny_v4):
    from tokenizers import Tokenizer

    cfg = json.loads((tiny_v4 / "config.json").read_text())
    tok = Tokenizer.from_file(str(tiny_v4 / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == cfg["vocab_size"] == 512
    vocab = tok.get_vocab(with_added_tokens=True)
    assert sorted(vocab.values()) == list(range(512))  # every id the model can sample decodes
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (vocab[tokenizer.BOS], vocab[tokenizer.EOS])
    for content, _ in tokenizer.ADDED_TOKENS:
        assert tok.encode(content, add_special_tokens=False).ids == [tokenizer.token_id(512, content)], (
            content
        )
    text = "<｜User｜>Hi!<｜Assistant｜><think>hmm</think>ok<｜DSML｜tool_calls>"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    # The parsers read <think>, </think> and ｜DSML｜ from text decoded with skip_special_tokens=True.
    assert tok.decode(ids, skip_special_tokens=True) == "Hi!<think>hmm</think>ok<｜DSML｜tool_calls>"
    assert tok.decode([300, 301]) != ""


def test_flash_plan_has_the_real_size_and_shards_without_writing():
    plan = layout.shards(spec.FLASH)
    size = layout.weights_bytes(plan)
    assert abs(size - FLASH_BYTES) / FLASH_BYTES < 0.005, size
    assert len(plan) == FLASH_SHARDS and plan[0].file == "model-00001-of-00046.safetensors"
    by_shard = [{t.name: (t.dtype, t.shape) for t in s.tensors} for s in plan]
    # Published header reads of the hub's shards: layer 0 in shard 2, the MTP layer alone in shard 46.
    assert by_shard[1]["layers.0.ffn.gate.tid2eid"] == ("I64", (129280, 6))
    assert by_shard[1]["layers.0.attn.wq_a.weight"] == ("F8_E4M3", (1024, 4096))
    assert by_shard[1]["layers.0.attn.wq_a.scale"] == ("F8_E8M0", (8, 32))
    assert by_shard[1]["layers.0.ffn.experts.0.w1.scale"] == ("F8_E8M0", (2048, 128))
    assert len(by_shard[-1]) == 1575 and all(n.startswith("mtp.0.") for n in by_shard[-1])
    assert by_shard[-1]["mtp.0.e_proj.weight"] == ("F8_E4M3", (4096, 4096))
    total, active = layout.param_counts(spec.FLASH)
    assert abs(total - 284e9) / 284e9 < 0.005 and 12e9 < active < 15e9  # 284B / 13B


def test_flash_shape_agrees_with_the_flash_profile():
    flash = load_profile("flash-preview").model  # the shape is the preview's (46 shards, MTP head)
    s = spec.FLASH
    assert (
        flash.kv_cache.compress_ratios
        == s.layer_ratios
        == load_profile("flash").model.kv_cache.compress_ratios
    )
    assert (flash.layers, flash.attention_heads) == (s.num_hidden_layers, s.num_attention_heads)
    shards = layout.shards(s)
    assert abs(layout.weights_bytes(shards) - flash.weights_bytes) / flash.weights_bytes < 0.005
    assert flash.shards == len(shards) == 46
    # the profile's MTP draft is the last shard, the only one holding mtp.0.* (published headers)
    mtp = [sh for sh in shards if any(t.name.startswith("mtp.") for t in sh.tensors)]
    assert len(mtp) == 1 and all(t.name.startswith("mtp.0.") for t in mtp[0].tensors)
    assert flash.draft.method == "mtp" and flash.draft.weights_bytes == mtp[0].file_bytes


def test_dimension_rules():
    assert spec.problems(spec.TINY_V4) == [] and spec.problems(spec.FLASH) == []
    assert any("2048" in p for p in spec.problems(dataclasses.replace(spec.TINY_V4, hidden_size=1024)))
    # 4 heads in o_groups 2 cannot split over TP 4
    assert any("TP 4" in p for p in spec.problems(dataclasses.replace(spec.TINY_V4, tp_sizes=(1, 2, 4))))
    assert spec.problems(dataclasses.replace(spec.TINY_V4, compress_ratios=(0, 4))) != []


def test_model_generate_names_dispatch_to_their_generator(tmp_path):
    assert generated.checkpoint_dir("tiny-v4").name.startswith("tiny-v4-")
    assert generated.checkpoint_dir("tiny").name.startswith("tiny-")
    with pytest.raises(ProfileError) as err:
        generated.checkpoint_dir("huge")
    assert "tiny-v4" in err.value.hint


def test_fetch_weights_generates_tiny_v4_once():
    from dsv4serve.weights.fetch import fetch_weights, missing_files

    profile = load_profile("tiny-v4")
    path = fetch_weights(profile, progress=False)
    assert path == generated.checkpoint_dir("tiny-v4") and missing_files(path) == []
    stamp = (path / "model-00001-of-00006.safetensors").stat().st_mtime_ns
    assert fetch_weights(profile, progress=False) == path
    assert (path / "model-00001-of-00006.safetensors").stat().st_mtime_ns == stamp


def test_plan_with_declared_gpus_gives_flash_s_v4_flags(run_cli):
    tiny, flash = (
        run_cli("plan", "tiny-v4", "--hardware", "2xH200", "--json"),
        run_cli("plan", "flash", "--hardware", "2xH200", "--json"),
    )
    assert tiny.exit_code == 0, tiny.stderr
    flags = [{a for a in json.loads(r.stdout)["args"] if a.startswith("--")} for r in (tiny, flash)]
    assert flags[0] == flags[1] - {"--revision"} and "--tokenizer-mode" in flags[0]  # a hub repo's pin


@pytest.mark.parametrize("command", ["up", "smoke"])
def test_without_a_gpu_tiny_v4_on_vllm_refuses_at_once(command, isolated_home):
    """--engine vllm: vLLM cannot run V4 here (auto picks llama.cpp or Transformers: test_engines.py)."""
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the refusal is tested whether NVML is absent (CI) or not.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dsv4serve", command, "tiny-v4", "--engine", "vllm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - t0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 3, done.stderr
    assert len(errors) == 1 and done.stdout == "", done.stderr
    assert "needs an NVIDIA GPU of compute capability 9.0+" in errors[0]
    assert "vLLM's CPU build cannot run DeepSeek-V4" in errors[0]
    assert not list((isolated_home / ".cache").glob("dsv4serve/checkpoints/tiny-v4-*"))  # nothing generated
    # About 0.7 s on an idle 2-core machine; the bound only catches a refusal that starts work first.
    assert elapsed < 15, elapsed
