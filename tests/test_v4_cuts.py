"""Layer-cut true shapes: Flash's and Pro's real per-layer dims with fewer layers, and the profile
dsv4serve writes for such a checkpoint (its path, layers, ratios and exact sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4serve.errors import UsageError
from dsv4serve.profiles.load import load_profile
from dsv4serve.profiles.types import GENERATED
from dsv4serve.weights import tiny, v4ckpt
from dsv4serve.weights.v4ckpt import layout
from dsv4serve.weights.v4ckpt.profile import sizes, write_profile
from dsv4serve.weights.v4ckpt.spec import FLASH, PRO, cut, problems

REPO = Path(__file__).resolve().parent.parent


def test_the_profile_schema_knows_every_generated_checkpoint():
    assert set(GENERATED) == set(tiny.SPECS) | set(v4ckpt.SHAPES)


def test_pro_has_the_published_dims():
    assert (PRO.hidden_size, PRO.num_hidden_layers, PRO.num_attention_heads) == (7168, 61, 128)
    assert (PRO.n_routed_experts, PRO.n_shared_experts, PRO.num_experts_per_tok) == (384, 1, 6)
    assert len(PRO.compress_ratios) == 62 and PRO.compress_ratios[:3] == (128, 128, 4)
    assert problems(PRO) == []
    total, active = layout.param_counts(PRO)
    assert 1.5e12 < total < 1.7e12 and 45e9 < active < 53e9  # the facts: 1.6T / 49B
    assert 855e9 < sizes(PRO)["weights_bytes"] < 875e9  # the facts: ~865 GB on disk


@pytest.mark.parametrize("shape, layers", [(FLASH, 12), (FLASH, 3), (PRO, 1), (PRO, 2)])
def test_a_cut_keeps_the_true_per_layer_shape(shape, layers):
    c = cut(shape, layers)
    assert c.name == f"{shape.name}-{layers}l" and c.cut_from == shape.name and c.profile == shape.profile
    assert c.layer_ratios == shape.layer_ratios[:layers]
    assert c.compress_ratios[layers:] == shape.compress_ratios[shape.num_hidden_layers :]  # the MTP layer
    assert c.num_hash_layers == min(layers, shape.num_hash_layers)
    assert (c.hidden_size, c.n_routed_experts, c.moe_intermediate_size) == (
        shape.hidden_size,
        shape.n_routed_experts,
        shape.moe_intermediate_size,
    )
    assert problems(c) == []
    full, part = layout.parts(shape), layout.parts(c)
    assert sum(x.nbytes for x in part["layers.0"]) == sum(x.nbytes for x in full["layers.0"])


def test_flash_cut_to_12_layers_is_what_was_written_on_the_h200():
    assert sizes(cut(FLASH, 12))["weights_bytes"] == 48_645_192_296  # 15 shards, 45.3 GiB (issue 20)


@pytest.mark.parametrize(
    "shape, layers, says",
    [
        (FLASH, 0, "1 to 43 layers"),
        (FLASH, 44, "1 to 43 layers"),
        (FLASH, 2, r"no compressed \(CSA/HCA\) layer"),
        (v4ckpt.get_spec("tiny-v4"), 2, "cuts a true shape"),
    ],
)
def test_a_cut_that_cannot_be_served_is_refused(shape, layers, says):
    with pytest.raises(UsageError, match=rf"{says}"):
        cut(shape, layers)


def test_the_written_profile_plans_the_cut_with_its_exact_figures(tmp_path, run_cli):
    spec = cut(FLASH, 12)
    ckpt = tmp_path / "flash-12l"
    profile = write_profile(spec, ckpt, tmp_path / "flash-12l.yaml")
    loaded = load_profile(str(profile))
    assert loaded.extends[0] == "flash-preview"
    assert loaded.model.path == str(ckpt.resolve()) and loaded.model.repo is None
    assert loaded.model.layers == 12 and loaded.model.weights_bytes == 48_645_192_296
    assert loaded.model.kv_cache.compress_ratios == spec.layer_ratios
    result = run_cli("plan", str(profile), "--hardware", "1xH200", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["fits"] and plan["tensor_parallel_size"] == 1
    assert plan["model"] == str(ckpt.resolve()) and plan["argv"][2] == plan["model"]
    assert run_cli("plan", "flash-preview", "--hardware", "1xH200", "--json").exit_code == 3  # the whole


def test_the_script_refuses_a_bad_cut_and_plans_a_good_one(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "make_v4_checkpoint.py")]
    bad = subprocess.run(
        [*script, "--shape", "flash", "--layers", "2", str(tmp_path / "x")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "keep at least 3 layers" in bad.stderr
    good = subprocess.run(
        [*script, "--shape", "pro", "--layers", "2", "--plan", str(tmp_path / "y")],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0 and "pro-2l: 5 shards" in good.stdout
    assert not (tmp_path / "y").exists()


def test_gpu_v4_names_its_files_by_a_profile_paths_stem(tmp_path):
    """scripts/gpu_v4.py with a profile given as a path: its output files hold no '/' (they failed)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_v4
    finally:
        sys.path.remove(str(REPO / "scripts"))
    (tmp_path / "sub").mkdir()
    profile = write_profile(cut(FLASH, 4), tmp_path / "ckpt", tmp_path / "sub" / "flash-4l.yaml")
    gpu_v4.plan_json(tmp_path, str(profile), "cpu")
    assert [p.name for p in tmp_path.glob("plan-*")] == ["plan-flash-4l-cpu.txt"]
