"""The generated tiny checkpoint: deterministic, atomic, loadable, and matching the tiny profile's facts."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from dsv4serve.errors import DownloadError, ProfileError
from dsv4serve.weights import tiny

SPEC = tiny.SPECS["tiny"]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def _bf16(raw: bytes) -> list[float]:
    # bf16 is the top half of a float32.
    return [struct.unpack("<f", b"\0\0" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny.write_checkpoint(SPEC, tmp_path_factory.mktemp("tiny"))


def test_same_spec_same_bytes(checkpoint, tmp_path):
    again = tiny.write_checkpoint(SPEC, tmp_path / "again")
    assert _digest(again) == _digest(checkpoint)


def test_seed_changes_the_weights(checkpoint, tmp_path):
    import dataclasses

    other = tiny.write_checkpoint(dataclasses.replace(SPEC, seed=1), tmp_path / "other")
    assert _digest(other)["model.safetensors"] != _digest(checkpoint)["model.safetensors"]
    assert tiny.spec_hash(dataclasses.replace(SPEC, seed=1)) != tiny.spec_hash(SPEC)


def test_safetensors_layout_matches_the_spec(checkpoint):
    path = checkpoint / "model.safetensors"
    header = _header(path)
    assert header.pop("__metadata__") == {"format": "pt"}
    shapes = tiny.tensor_shapes(SPEC)
    assert {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()} == shapes
    width = {"BF16": 2, "F32": 4}
    end = 0
    for name in sorted(header):  # contiguous, in name order, sizes from dtype x shape
        start, stop = header[name]["data_offsets"]
        n = width[header[name]["dtype"]]
        for d in header[name]["shape"]:
            n *= d
        assert (start, stop - start) == (end, n), name
        end = stop
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header_len % 8 == 0
    assert path.stat().st_size == 8 + header_len + end


def test_weights_are_small_random_bf16_and_norms_are_one(checkpoint):
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    header = _header(path)
    base = 8 + struct.unpack("<Q", data[:8])[0]

    def tensor(name: str) -> bytes:
        start, stop = header[name]["data_offsets"]
        return data[base + start : base + stop]

    values = _bf16(tensor("model.layers.0.self_attn.kv_b_proj.weight")[:4000])
    assert all(2**-7 <= abs(v) < 2**-5 for v in values)
    assert 0.3 < sum(v > 0 for v in values) / len(values) < 0.7
    assert len(set(values)) > 100
    assert set(_bf16(tensor("model.layers.1.self_attn.kv_a_layernorm.weight"))) == {1.0}
    assert set(tensor("model.layers.1.mlp.gate.e_score_correction_bias")) == {0}


def test_config_is_deepseek_v3_with_mla_and_sigmoid_moe(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"]) == (512, 64)  # vLLM's MLA backends
    assert (config["qk_nope_head_dim"], config["v_head_dim"]) == (128, 128)
    assert (config["topk_method"], config["scoring_func"]) == ("noaux_tc", "sigmoid")
    assert config["num_nextn_predict_layers"] == 0
    assert config["num_attention_heads"] % 8 == 0  # tensor parallel 8 must divide the heads
    assert config["n_routed_experts"] % config["n_group"] == 0
    assert config["vocab_size"] == tiny.VOCAB_SIZE


def test_tiny_profile_facts_match_the_checkpoint(checkpoint):
    from dsv4serve.profiles.load import load_profile

    model = load_profile("tiny").model
    config = json.loads((checkpoint / "config.json").read_text())
    total, active = tiny.param_counts(SPEC)
    assert model.generate == "tiny"
    assert (model.total_params, model.active_params) == (total, active)
    assert model.weights_bytes == (checkpoint / "model.safetensors").stat().st_size
    assert model.attention_heads == config["num_attention_heads"]
    assert model.layers == config["num_hidden_layers"]
    assert model.max_context == config["max_position_embeddings"]
    kv = config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 2
    assert model.kv_bytes_per_token == kv


def test_tokenizer_round_trips_bytes_and_knows_the_specials(checkpoint):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    assert tok.get_vocab_size() == tiny.VOCAB_SIZE
    text = "Hello, wörld! 你好 \t\n"
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode("<|user|>hi<|assistant|>").ids == [258, ord("h"), ord("i"), 259]


def test_chat_template_renders_a_conversation(checkpoint):
    import jinja2

    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    template = jinja2.Environment().from_string(config["chat_template"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    text = template.render(
        messages=messages, add_generation_prompt=True, bos_token="<|bos|>", eos_token="<|eos|>"
    )
    assert text == "<|bos|>Be brief.\n<|user|>Hi<|assistant|>Hello<|eos|><|user|>Bye<|assistant|>"


def test_ensure_checkpoint_uses_the_user_cache_and_reuses_it(isolated_home):
    path = tiny.ensure_checkpoint("tiny")
    assert path == isolated_home / ".cache" / "dsv4serve" / "checkpoints" / f"tiny-{tiny.spec_hash(SPEC)}"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_checkpoint("tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dir left behind


def test_a_half_written_checkpoint_is_never_used(isolated_home, monkeypatch):
    def fail(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tiny, "_write_safetensors", fail)
    with pytest.raises(DownloadError, match="No space left on device"):
        tiny.ensure_checkpoint("tiny")
    root = tiny.cache_root()
    assert list(root.iterdir()) == []  # neither the final directory nor the temp one
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated_home / ".cache"))
    # A leftover temp dir of a killed writer is ignored: the next call writes a complete checkpoint.
    (root / f".tiny-{tiny.spec_hash(SPEC)}.dead").mkdir()
    path = tiny.ensure_checkpoint("tiny")
    assert path.name == f"tiny-{tiny.spec_hash(SPEC)}"
    assert _digest(path) == _digest(tiny.write_checkpoint(SPEC, isolated_home / "fresh"))


def test_unknown_generator_is_a_profile_error():
    with pytest.raises(ProfileError, match="unknown generated checkpoint 'huge'"):
        tiny.ensure_checkpoint("huge")


def test_make_tiny_script_writes_a_directory(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_tiny.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ck")], capture_output=True, text=True, check=True
    )
    total, active = tiny.param_counts(SPEC)
    assert f"{total:,} params, {active:,} active" in out.stdout
    assert sorted(os.listdir(tmp_path / "ck")) == sorted(
        [
            "config.json",
            "dsv4serve-tiny.json",
            "generation_config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
