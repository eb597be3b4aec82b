"""The DeepSeek-V4 checkpoint variants as profiles (issue 19): flash/pro = the official 0731/0813 releases,
-preview and -nvfp4 beside them, `profiles list` showing the family, the once-only note that `flash`
changed, the NVFP4 refusal on Hopper, and the stand-in size that `up` replaces with the hub's."""

from __future__ import annotations

import json

import pytest

from dsv4serve.errors import EXIT_NO_FIT
from dsv4serve.hardware.inventory import parse_hardware
from dsv4serve.planning.plan import Overrides, make_plan
from dsv4serve.profiles.load import load_profile
from tests.hubserver import HubServer
from tests.test_weights import checkpoint, shard

# The variants table of shared/facts/vllm-versions-v4.md (vllm-project/recipes, 2026-08):
# profile -> (repo, variant, draft, min vLLM)
VARIANTS = {
    "flash": ("deepseek-ai/DeepSeek-V4-Flash-0731", "0731", "dspark", "0.25.0"),
    "flash-preview": ("deepseek-ai/DeepSeek-V4-Flash", "preview", "mtp", "0.20.0"),
    "flash-nvfp4": ("nvidia/DeepSeek-V4-Flash-NVFP4", "nvfp4", "mtp", "0.20.0"),
    "pro": ("deepseek-ai/DeepSeek-V4-Pro-0813", "0813", "dspark", "0.25.0"),
    "pro-preview": ("deepseek-ai/DeepSeek-V4-Pro", "preview", "mtp", "0.20.0"),
    "pro-nvfp4": ("nvidia/DeepSeek-V4-Pro-NVFP4", "nvfp4", "mtp", "0.20.0"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_is_a_profile_of_its_family(name):
    p = load_profile(name)
    repo, variant, draft, min_vllm = VARIANTS[name]
    assert (p.model.repo, p.model.variant, p.model.draft.method, p.serve.min_vllm_version) == (
        repo,
        variant,
        draft,
        min_vllm,
    )
    assert p.model.family == name.split("-")[0] and p.model.revision == "main"
    assert p.model.sources, "every variant names where its figures come from"
    assert p.model.draft.layers == {"mtp": 1, "dspark": 3}[draft]
    # every variant of a family has the family's KV cache (the same layers and compress ratios)
    base = load_profile(p.model.family)
    assert p.model.kv_cache == base.model.kv_cache and p.model.layers == base.model.layers


def test_the_figures_known_offline_and_the_stand_ins():
    flash, preview = load_profile("flash").model, load_profile("flash-preview").model
    assert (flash.weights_bytes, flash.shards, flash.weights_exact) == (166_878_536_440, 48, True)
    assert (preview.weights_bytes, preview.shards, preview.weights_exact) == (159_622_459_555, 46, True)
    assert flash.draft.block_size == 5  # 0731's dspark_block_size: the default K
    for name in ("pro", "flash-nvfp4", "pro-nvfp4"):  # sizes not known offline: a stand-in, said so
        m = load_profile(name).model
        assert not m.weights_exact
        stand_in = load_profile("flash-preview" if name.startswith("flash") else "pro-preview").model
        assert m.weights_bytes == stand_in.weights_bytes
    assert load_profile("pro").model.draft.block_size == 0  # 0813's dspark_block_size: not known


def test_profiles_list_shows_variant_draft_min_vllm_and_size(run_cli):
    out = run_cli("profiles", "list").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["flash"][1:5] == ["0731", "dspark", "0.25.0", "155.42"]
    assert rows["flash-preview"][1:5] == ["preview", "mtp", "0.20.0", "148.66"]
    assert rows["pro"][1:4] == ["0813", "dspark", "0.25.0"] and rows["pro"][4].startswith("~")  # stand-in
    data = json.loads(run_cli("profiles", "list", "--json").stdout)
    entry = next(e for e in data["profiles"] if e["name"] == "flash-nvfp4")
    assert (entry["variant"], entry["draft"], entry["weights_exact"]) == ("nvfp4", "mtp", False)
    assert entry["family"] == "flash"


@pytest.mark.parametrize(
    ("name", "fallback"), [("flash-nvfp4", "flash-preview"), ("pro-nvfp4", "pro-preview")]
)
def test_nvfp4_is_refused_on_hopper_naming_the_variant_to_use(name, fallback):
    from dsv4serve.errors import HardwareError
    from dsv4serve.preflight.options import ensure_fits

    hopper = parse_hardware("8xH200").gpus
    p = make_plan(load_profile(name), hopper, Overrides())
    assert not p.fits
    assert any(
        "compute capability 9.0, below the 10.0" in x and f"use the profile {fallback}" in x
        for x in p.problems
    )
    with pytest.raises(HardwareError) as err:
        ensure_fits(p)
    assert err.value.exit_code == EXIT_NO_FIT and f"dsv4serve plan {fallback}" in err.value.hint
    assert make_plan(load_profile(fallback), hopper, Overrides()).fits
    assert make_plan(load_profile(name), parse_hardware("8xB200").gpus, Overrides()).fits  # cc 10.0


def test_the_new_meaning_of_flash_is_announced_once(run_cli, isolated_home, tmp_path):
    first = run_cli("plan", "flash", "--hardware", "2xH200")
    assert first.exit_code == 0
    said = [x for x in first.stdout.splitlines() if "now serves" in x]
    assert len(said) == 1 and said[0].startswith("note: profile flash now serves DeepSeek-V4-Flash-0731")
    assert "the profile flash-preview (said once)" in said[0]
    again = run_cli("plan", "flash", "--hardware", "2xH200", "--json")
    assert not any("now serves" in n for n in json.loads(again.stdout)["notes"])
    assert "now serves" not in run_cli("plan", "flash-preview", "--hardware", "2xH200").stdout
    # a failed plan says nothing of it (and keeps it for later)
    assert "now serves" not in run_cli("plan", "pro", "--hardware", "0xH200").stdout
    # a user's profile that extends pro changed with it: told once, through its parent's name
    child = tmp_path / "mypro.yaml"
    child.write_text("extends: pro\nserve: {max_model_len: 131072}\n")
    res = run_cli("plan", str(child), "--hardware", "8xH200", "--json")
    assert any(
        n.startswith("profile mypro (through `extends: pro`) now serves DeepSeek-V4-Pro-0813")
        for n in json.loads(res.stdout)["notes"]
    )
    assert (isolated_home / ".local" / "state" / "dsv4serve" / "notices" / "pro-0813").is_file()
    assert "now serves" not in run_cli("plan", "pro", "--hardware", "8xH200").stdout
    assert "now serves" not in res.stderr


def test_up_says_it_on_stderr(run_cli):
    from dsv4serve.preflight.options import plan_from_options
    from dsv4serve.serving.prepare import announce_changes

    _, plan = plan_from_options("flash", hardware="2xH200")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        announce_changes(plan, as_json=False)
        announce_changes(plan, as_json=True)
    assert err.getvalue().count("now serves DeepSeek-V4-Flash-0731") == 1


def test_a_stand_in_size_is_said_in_the_plan():
    p = make_plan(load_profile("pro"), parse_hardware("8xH200").gpus, Overrides())
    assert any("size is not known offline" in n and "hub's file sizes" in n for n in p.notes)
    exact = make_plan(load_profile("pro-preview"), parse_hardware("8xH200").gpus, Overrides())
    assert not any("size is not known offline" in n for n in exact.notes)


def test_up_replans_a_stand_in_with_the_hubs_sizes_before_the_first_byte(run_cli, tmp_path, monkeypatch):
    # A CPU profile with a stand-in size that fits; the hub's listing declares a 1 PiB shard.
    files = checkpoint()
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_repo("acme/standin", files, declared_sizes={shard(files): 2**50})
        path = tmp_path / "standin.yaml"
        path.write_text(
            "extends: tiny\nmodel:\n  repo: acme/standin\n  generate: null\n  weights_exact: false\n"
            "  allow_patterns: ['*.safetensors', '*.json']\n"
        )
        assert run_cli("plan", str(path), "--device", "cpu").exit_code == 0  # the stand-in fits
        res = run_cli("up", str(path))
        assert res.exit_code == EXIT_NO_FIT, res.stderr
        assert "RAM" in res.stderr  # the CPU plan with the listed 1 PiB
        assert not any("/resolve/" in p for _, p, _ in hub.requests)  # not one file requested


def test_fetch_tells_the_listed_safetensors_bytes_before_downloading(tmp_path, monkeypatch):
    from dsv4serve.weights.fetch import fetch_weights

    files = checkpoint()
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_repo("acme/sized", files)
        profile = load_profile(_write(tmp_path / "sized.yaml", "extends: tiny\nmodel: {repo: acme/sized}\n"))
        seen = []

        def stop(size):
            seen.append(size)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fetch_weights(profile, progress=False, before_download=stop)
        assert seen == [sum(len(d) for n, d in files.items() if n.endswith(".safetensors"))]
        assert not any("/resolve/" in p for _, p, _ in hub.requests)


def _write(path, text):
    path.write_text(text)
    return str(path)
