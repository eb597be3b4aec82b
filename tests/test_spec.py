"""Speculative decoding, planned (issue 19): --spec off|mtp|dspark, --spec-tokens K, the draft's weights
counted only when on, its KV layers, `--speculative-config` after `--` folded or refused."""

from __future__ import annotations

import json
import math

import pytest

from dsv4serve.engines.vllm.releases import RELEASES
from dsv4serve.errors import ProfileError, UsageError
from dsv4serve.hardware.inventory import parse_hardware
from dsv4serve.planning.memory import KvContext, kv_need_bytes
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile


def plan(name, hardware="2xH200", **overrides):
    overrides.setdefault("vllm_version", "0.32")
    return make_plan(load_profile(name), parse_hardware(hardware).gpus, Overrides(**overrides))


def config(p):
    args = list(p.args)
    return (
        json.loads(args[args.index("--speculative-config") + 1]) if "--speculative-config" in args else None
    )


def test_off_by_default_and_the_mtp_layer_is_not_counted():
    p = plan("flash-preview")
    profile = load_profile("flash-preview")
    draft = profile.model.draft.weights_bytes
    assert config(p) is None and p.spec.method == "off"
    assert p.memory[0].weights == math.ceil((profile.model.weights_bytes - draft) / 2)
    assert any("does not load the MTP draft's 3.35 GiB" in n for n in p.notes)


def test_mtp_on_counts_the_draft_and_gives_vllm_its_config():
    off, on = plan("flash-preview"), plan("flash-preview", spec="mtp")
    profile = load_profile("flash-preview")
    assert on.memory[0].weights == math.ceil(profile.model.weights_bytes / 2)
    assert on.spec.draft_weights_per_gpu == on.memory[0].weights - off.memory[0].weights > 0
    assert config(on) == {"method": "mtp", "num_speculative_tokens": 1}  # the recipes: N=1 on Hopper
    assert on.spec.tokens == 1 and on.spec.draft_layers == 1
    assert any("41402" in n for n in on.notes)  # TP 2: the deadlock is said


def test_mtp_defaults_to_two_tokens_off_hopper_and_takes_spec_tokens():
    assert plan("flash-preview", "4xB200", spec="mtp").spec.tokens == 2
    assert plan("pro-preview", "8xH200", spec="mtp").spec.tokens == 2  # Pro: N=2 on every GPU
    assert config(plan("flash-preview", spec="mtp", spec_tokens=3))["num_speculative_tokens"] == 3


def test_mtp_at_tp_1_says_nothing_of_the_deadlock():
    p = plan("flash-preview", "1x300GiB@9.0", spec="mtp")
    assert p.tensor_parallel_size == 1 and not any("41402" in n for n in p.notes)


def test_dspark_on_the_official_release_uses_its_block_size():
    p = plan("flash", spec="dspark")
    assert config(p) == {
        "method": "dspark",
        "num_speculative_tokens": 5,
        "draft_sample_method": "probabilistic",
    }
    assert any("54011" in n for n in p.notes)  # SM90: adaptive verification
    assert any("not known offline" in n for n in p.notes)  # 0731's draft size
    k7 = plan("flash", spec="dspark", spec_tokens=7)
    assert any("K=7 gave 4.4%" in n for n in k7.notes)


@pytest.mark.parametrize(
    ("name", "spec", "tokens", "words"),
    [
        ("flash", "mtp", None, ["carries a dspark draft", "--spec dspark"]),
        ("flash-preview", "dspark", None, ["carries a mtp draft", "--spec mtp"]),
        ("pro", "dspark", None, ["dspark_block_size", "--spec-tokens K"]),
        ("tiny", "mtp", None, ["carries no speculative-decoding draft"]),
        ("flash", "eagle", None, ["unknown method"]),
        ("flash", "dspark", 0, ["1 to 32"]),
        ("flash", "dspark", 33, ["1 to 32"]),
    ],
)
def test_what_cannot_be_served_is_refused(name, spec, tokens, words):
    with pytest.raises(UsageError) as err:
        plan(name, spec=spec, spec_tokens=tokens, model_location="/m")
    text = err.value.message + " " + err.value.hint
    assert all(w in text for w in words), text


def test_dspark_on_pro_with_spec_tokens():
    p = plan("pro", "8xH200", spec="dspark", spec_tokens=5)
    assert p.fits and config(p)["num_speculative_tokens"] == 5


def test_the_drafts_kv_layers_are_planned():
    """0.26 pads: DSpark's 3 SWA-only layers make the widest page 23 layers (1,077,120 B per block) and
    raise the need; 0.32 packs them into the SWA groups' room, and the need stays."""
    flash = load_profile("flash")
    for version, grows in (("0.26", True), ("0.32", False)):
        p = plan("flash", spec="dspark", vllm_version=version)
        base = kv_need_bytes(flash, p.max_model_len, 2, KvContext(RELEASES[version], None, draft_layers=0))
        with_draft = kv_need_bytes(
            flash, p.max_model_len, 2, KvContext(RELEASES[version], None, draft_layers=3)
        )
        assert p.spec.draft_kv_bytes == with_draft - base and (p.spec.draft_kv_bytes > 0) is grows
        assert p.memory[0].kv_cache == with_draft
    assert plan("flash", spec="dspark", vllm_version="0.26").kv.block_stride == 1_077_120


def test_plan_text_shows_the_drafts_memory(run_cli):
    out = run_cli(
        "plan", "flash-preview", "--hardware", "2xH200", "--spec", "mtp", "--vllm-version", "0.32"
    ).stdout
    assert (
        "speculative decoding mtp, 1 draft token per step: the draft (1 layer) adds 1.67 GiB of weights"
        in out
    )
    assert '--speculative-config \'{"method":"mtp","num_speculative_tokens":1}\'' in out
    data = json.loads(
        run_cli(
            "plan", "flash", "--hardware", "2xH200", "--spec", "dspark", "--json", "--vllm-version", "0.26"
        ).stdout
    )
    assert data["spec"]["method"] == "dspark" and data["spec"]["draft_kv_bytes"] > 0


def test_speculative_config_after_the_dashes_is_folded(run_cli):
    folded = run_cli(
        "plan",
        "flash-preview",
        "--hardware",
        "2xH200",
        "--json",
        "--",
        "--speculative_config",
        '{"method": "mtp", "num_speculative_tokens": 2}',
    )
    direct = run_cli(
        "plan", "flash-preview", "--hardware", "2xH200", "--json", "--spec", "mtp", "--spec-tokens", "2"
    )
    a, b = json.loads(folded.stdout), json.loads(direct.stdout)
    assert a["argv"] == b["argv"] and a["memory"] == b["memory"]
    assert a["argv"].count("--speculative-config") == 1  # the planner's, not a second one


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'],
            "not one the plan models",
        ),
        (["--speculative-config", '{"method": "mtp", "model": "x/y"}'], "model not modeled by the plan"),
        (["--speculative-config", "mtp"], "expected a JSON object"),
        (["--speculative-config.method", "mtp"], "changes the weights and the KV cache"),
        (["-sc", '{"method": "dspark"}'], "contradicts --spec"),
    ],
)
def test_speculative_config_the_plan_cannot_model_is_refused(run_cli, extra, words):
    res = run_cli("plan", "flash-preview", "--hardware", "2xH200", "--spec", "mtp", "--", *extra)
    assert res.exit_code == 2 and words in res.stderr and "--spec" in res.stderr


def test_a_profile_cannot_hide_a_speculative_config_in_extra_args(tmp_path):
    path = tmp_path / "sneaky.yaml"
    path.write_text("extends: flash-preview\nserve:\n  extra_args: [--speculative-config, '{}']\n")
    with pytest.raises(ProfileError, match="serve.extra_args"):
        load_profile(str(path))


def test_a_profiles_own_default(tmp_path):
    path = tmp_path / "mtp.yaml"
    path.write_text("extends: flash-preview\nserve: {speculative: mtp, speculative_tokens: 2}\n")
    p = make_plan(load_profile(str(path)), parse_hardware("2xH200").gpus, Overrides())
    assert config(p) == {"method": "mtp", "num_speculative_tokens": 2}
    assert (
        make_plan(load_profile(str(path)), parse_hardware("2xH200").gpus, Overrides(spec="off")).spec.method
        == "off"
    )
