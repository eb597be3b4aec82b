"""Profiles: built-in facts, the bad-profile table, search path, shadowing, extends, commands."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dsv4serve.errors import ProfileError
from dsv4serve.profiles import load as profiles
from dsv4serve.profiles.document import read_document
from dsv4serve.profiles.fields import build
from dsv4serve.profiles.load import load_profile, profile_to_dict, search_path

# A complete profile that needs no parent; bad cases below start from it or from `extends: flash`.
STANDALONE = """\
name: solo
description: a standalone profile
model:
  path: /models/solo
  layers: 2
  attention_heads: 8
  weights_bytes: 1000
  kv_bytes_per_token: 64
  max_context: 4096
serve:
  max_model_len: 2048
"""


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def user_dir(isolated_home) -> Path:
    return isolated_home / ".config" / "dsv4serve" / "profiles"


@pytest.fixture
def system_dir(tmp_path, monkeypatch) -> Path:
    """Stand in for /etc/dsv4serve/profiles (the real one is outside the test's reach)."""
    path = tmp_path / "etc-profiles"
    monkeypatch.setattr(profiles, "SYSTEM_PROFILE_DIR", path)
    return path


# --- built-ins -----------------------------------------------------------------------------------


def test_show_flash_json_reports_checkpoint_facts(run_cli):
    result = run_cli("profiles", "show", "flash-preview", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"]["total_params"] == 284 * 10**9
    assert data["model"]["active_params"] == 13 * 10**9
    assert data["model"]["layers"] == 43
    assert data["model"]["max_context"] == 1_048_576
    assert data["serve"]["enforce_eager"] is True
    assert data["origin"] == "builtin"


def test_show_pro_json_reports_checkpoint_facts(run_cli):
    data = json.loads(run_cli("profiles", "show", "pro", "--json").stdout)
    assert (data["model"]["total_params"], data["model"]["active_params"]) == (1_600 * 10**9, 49 * 10**9)
    assert data["model"]["layers"] == 61
    assert data["model"]["attention_heads"] == 128
    assert data["serve"]["enforce_eager"] is True


@pytest.mark.parametrize("name", ["pro", "flash"])
def test_v4_profiles_carry_the_recipe_flags(name):
    serve = load_profile(name).serve
    assert (serve.kv_cache_dtype, serve.block_size, serve.tokenizer_mode) == ("fp8", 256, "deepseek_v4")
    assert serve.reasoning_parser == serve.tool_call_parser == "deepseek_v4"
    assert serve.trust_remote_code and serve.enable_auto_tool_choice and serve.enable_expert_parallel


def test_show_text_prints_human_figures(run_cli):
    result = run_cli("profiles", "show", "flash-preview")
    assert result.exit_code == 0
    assert "284B total / 13B active" in result.stdout
    assert "1,048,576 max context" in result.stdout
    assert "1.6T total / 49B active" in run_cli("profiles", "show", "pro").stdout


def test_builtins_validate(run_cli):
    files = sorted(str(p) for p in (Path(__file__).parent.parent / "profiles").glob("*.yaml"))
    result = run_cli("profiles", "validate", *files, "--json")
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["valid"] and {r["name"] for r in report["results"]} >= {"pro", "flash", "tiny"}


def test_profile_to_dict_round_trips_through_yaml(tmp_path):
    data = profile_to_dict(load_profile("pro"))
    for key in ("source", "origin", "extends"):
        data.pop(key)
    copy = load_profile(str(write(tmp_path / "pro.yaml", yaml.safe_dump(data))))
    assert dataclasses.replace(copy, source="", origin="") == dataclasses.replace(
        load_profile("pro"), source="", origin=""
    )


# --- the bad-profile table -----------------------------------------------------------------------

# (id, YAML text, dotted field path, line) -> exit 2 and "FILE:LINE: FIELD.PATH: ..." in the message.
BAD = [
    ("unknown-top-key", "extends: flash\nservee:\n  max_model_len: 1000\n", "servee", 2),
    ("unknown-serve-key", "extends: flash\nserve:\n  max_model_length: 1000\n", "serve.max_model_length", 3),
    (
        "unknown-rule-key",
        "extends: flash\nhardware:\n  - {gpus: 2, min_vram_gib: 80, tp: 2}\n",
        "hardware[0].tp",
        3,
    ),
    ("loader-field-in-yaml", "extends: flash\norigin: builtin\n", "origin", 2),
    ("bool-is-not-int", "extends: flash\nserve:\n  max_model_len: true\n", "serve.max_model_len", 3),
    ("quoted-int", "extends: flash\nserve:\n  max_model_len: '4096'\n", "serve.max_model_len", 3),
    ("string-for-bool", "extends: flash\nserve:\n  enforce_eager: 'yes'\n", "serve.enforce_eager", 3),
    (
        "string-for-float",
        "extends: flash\nserve:\n  gpu_memory_utilization: high\n",
        "serve.gpu_memory_utilization",
        3,
    ),
    ("extra-args-not-list", "extends: flash\nserve:\n  extra_args: --foo\n", "serve.extra_args", 3),
    (
        "extra-args-item-int",
        "extends: flash\nserve:\n  extra_args:\n    - --max-num-seqs\n    - 16\n",
        "serve.extra_args[1]",
        5,
    ),
    ("env-not-mapping", "extends: flash\nserve:\n  env: [A=1]\n", "serve.env", 3),
    ("env-value-int", "extends: flash\nserve:\n  env:\n    VLLM_X: 1\n", "serve.env.VLLM_X", 4),
    ("env-bad-name", "extends: flash\nserve:\n  env: {BAD-NAME: x}\n", "serve.env.BAD-NAME", 3),
    ("serve-not-mapping", "extends: flash\nserve: 5\n", "serve", 2),
    ("hardware-not-list", "extends: flash\nhardware: {gpus: 2}\n", "hardware", 2),
    ("rule-not-mapping", "extends: flash\nhardware: [8]\n", "hardware[0]", 2),
    ("non-string-key", "extends: flash\nserve:\n  1: x\n", "serve", 3),
    ("negative-size", "extends: flash\nmodel:\n  weights_bytes: -1\n", "model.weights_bytes", 3),
    (
        "utilization-above-1",
        "extends: flash\nserve:\n  gpu_memory_utilization: 1.5\n",
        "serve.gpu_memory_utilization",
        3,
    ),
    (
        "utilization-zero",
        "extends: flash\nserve:\n  gpu_memory_utilization: 0\n",
        "serve.gpu_memory_utilization",
        3,
    ),
    ("len-over-context", "extends: flash\nserve:\n  max_model_len: 2000000\n", "serve.max_model_len", 3),
    ("block-size-zero", "extends: flash\nserve:\n  block_size: 0\n", "serve.block_size", 3),
    (
        "tp-not-dividing-heads",
        "extends: flash\nhardware:\n  - {gpus: 6, min_vram_gib: 80, tensor_parallel_size: 6}\n",
        "hardware[0].tensor_parallel_size",
        3,
    ),
    (
        "tp-over-gpus",
        "extends: flash\nhardware:\n  - {gpus: 2, min_vram_gib: 80, tensor_parallel_size: 4}\n",
        "hardware[0].tensor_parallel_size",
        3,
    ),
    (
        "rule-zero-gpus",
        "extends: flash\nhardware:\n  - {gpus: 0, min_vram_gib: 80, tensor_parallel_size: 1}\n",
        "hardware[0].gpus",
        3,
    ),
    (
        "rule-missing-tp",
        "extends: flash\nhardware:\n  - gpus: 2\n    min_vram_gib: 80\n",
        "hardware[0].tensor_parallel_size",
        3,
    ),
    (
        "cc-unquoted-float",
        "extends: flash\nmodel:\n  min_compute_capability: 9.0\n",
        "model.min_compute_capability",
        3,
    ),
    (
        "cc-not-a-version",
        "extends: flash\nmodel:\n  min_compute_capability: nine\n",
        "model.min_compute_capability",
        3,
    ),
    (
        "active-over-total",
        "extends: flash\nmodel:\n  active_params: 310000000000\n",
        "model.active_params",
        3,
    ),
    ("repo-not-owner-name", "extends: flash\nmodel:\n  repo: justaname\n", "model.repo", 3),
    (
        "two-sources",
        STANDALONE.replace("  path: /models/solo\n", "  path: /models/solo\n  generate: tiny\n"),
        "model.generate",
        5,
    ),
    ("no-source", STANDALONE.replace("  path: /models/solo\n", ""), "model", 3),
    (
        "revision-without-repo",
        STANDALONE.replace("  path: /models/solo\n", "  path: /m\n  revision: abc\n"),
        "model.revision",
        5,
    ),
    ("missing-description", STANDALONE.replace("description: a standalone profile\n", ""), "description", 1),
    ("missing-serve", STANDALONE.split("serve:")[0], "serve", 1),
    ("missing-fact", STANDALONE.replace("  max_context: 4096\n", ""), "model.max_context", 3),
    ("zero-fact", STANDALONE.replace("  layers: 2\n", "  layers: 0\n"), "model.layers", 5),
    ("bad-name", STANDALONE.replace("name: solo", "name: 'bad name!'"), "name", 1),
    (
        "duplicate-key",
        "extends: flash\nserve:\n  max_model_len: 1000\n  max_model_len: 2000\n",
        "serve.max_model_len",
        4,
    ),
    ("duplicate-top-key", "extends: flash\nextends: pro\n", "extends", 2),
    ("null-clears-a-required-fact", "extends: flash\nmodel:\n  layers: null\n", "model.layers", 3),
    ("null-clears-the-only-source", "extends: tiny\nmodel:\n  generate: null\n", "model.generate", 3),
    ("null-on-an-unknown-key", "extends: flash\nservee: null\n", "servee", 2),
    ("null-without-extends-is-typed", STANDALONE + "  enforce_eager: null\n", "serve.enforce_eager", 12),
    ("missing-parent", "extends: nosuchprofile\n", "extends", 1),
    ("missing-parent-file", "extends: ./nope.yaml\n", "extends", 1),
    ("extends-not-string", "extends: [flash]\n", "extends", 1),
    ("extends-itself-by-path", "description: loop\nextends: ./bad.yaml\n", "extends", 2),
]


@pytest.mark.parametrize(("text", "field", "line"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_profile_names_file_line_and_field(run_cli, tmp_path, text, field, line):
    path = write(tmp_path / "bad.yaml", text)
    result = run_cli("profiles", "show", str(path))
    assert result.exit_code == 2
    assert f"error: {path}:{line}: {field}: " in result.stderr
    assert "\nhint: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # one line of message, one of hint
    assert "Traceback" not in result.stderr + result.stdout


# Broken files without a field to name: (id, content, words in the message, line or 0 when unknown).
BROKEN_FILES = [
    ("empty", "", "empty profile", 0),
    ("only-comments", "# nothing here\n", "empty profile", 0),
    ("list-document", "- a\n- b\n", "(top level): expected a mapping", 1),
    ("scalar-document", "flash\n", "(top level): expected a mapping", 1),
    ("syntax-error", "serve:\n  max_model_len: [1, 2\nmodel: {}\n", "invalid YAML", 3),
    ("bad-indent", "serve:\n  a: 1\n b: 2\n", "invalid YAML", 3),
    ("two-documents", "name: a\n---\nname: b\n", "invalid YAML", 2),
    ("python-tag", "name: !!python/object/apply:os.system [ls]\n", "unsupported YAML tag", 1),
    ("python-scalar-tag", "name: !!python/name:os.system x\n", "invalid YAML", 1),
    ("binary-junk", b"PK\x03\x04\x00\x00\x08\x00binaryjunk", "binary data", 0),
    ("not-utf8", b"name: x\ndescription: caf\xe9\n", "not UTF-8", 2),
    (
        "alias-bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True)
        ),
        "exploding YAML aliases",
        0,
    ),
]


@pytest.mark.parametrize(
    ("content", "words", "line"), [c[1:] for c in BROKEN_FILES], ids=[c[0] for c in BROKEN_FILES]
)
def test_broken_file_is_one_clean_error(run_cli, tmp_path, content, words, line):
    path = write(tmp_path / "broken.yaml", content)
    result = run_cli("profiles", "validate", str(path))
    assert result.exit_code == 2
    assert words in result.stdout and str(path) in result.stdout
    if line:
        assert f"{path}:{line}: " in result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_key_suggests_the_closest_field(run_cli, tmp_path):
    path = write(tmp_path / "typo.yaml", "extends: flash\nserve:\n  gpu_memory_utilisation: 0.8\n")
    assert "hint: did you mean gpu_memory_utilization?" in run_cli("profiles", "show", str(path)).stderr


def test_unknown_profile_name_suggests_a_known_one(run_cli):
    result = run_cli("profiles", "show", "flsh")
    assert result.exit_code == 2
    assert "profile 'flsh' not found" in result.stderr and "did you mean flash" in result.stderr


def test_missing_file_path_is_a_profile_error(run_cli, tmp_path):
    result = run_cli("profiles", "show", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "no such profile file" in result.stderr


def test_validation_follows_fields_added_to_the_dataclasses(tmp_path):
    # A field added later to profile_types is checked with no change to the validator.
    extra = dataclasses.make_dataclass("Extra", [("new_limit", int, 0)], frozen=True)
    doc = read_document(write(tmp_path / "x.yaml", "new_limit: true\n"))
    with pytest.raises(ProfileError, match=r"x.yaml:1: new_limit: expected an integer, got a boolean"):
        build(extra, doc, "")
    assert build(extra, read_document(write(tmp_path / "y.yaml", "new_limit: 3\n")), "").new_limit == 3


# --- search path and shadowing -------------------------------------------------------------------


def test_search_path_order(tmp_path, monkeypatch, user_dir, system_dir):
    monkeypatch.setenv("DSV4SERVE_PROFILE_PATH", f"{tmp_path / 'e1'}:{tmp_path / 'e2'}")
    entries = search_path([str(tmp_path / "cli")])
    assert [origin for _, origin in entries] == [
        "profile-dir",
        "env",
        "env",
        "cwd",
        "user",
        "system",
        "builtin",
    ]
    assert entries[0][0] == tmp_path / "cli"
    assert entries[3][0] == Path.cwd() / "profiles"
    assert entries[4][0] == user_dir
    assert entries[5][0] == system_dir
    assert (entries[6][0] / "flash.yaml").is_file()


def test_first_directory_on_the_path_wins(tmp_path, monkeypatch, user_dir, system_dir):
    dirs = {
        "profile-dir": tmp_path / "cli",
        "env": tmp_path / "env",
        "cwd": Path.cwd() / "profiles",
        "user": user_dir,
        "system": system_dir,
    }
    monkeypatch.setenv("DSV4SERVE_PROFILE_PATH", str(dirs["env"]))
    for origin, directory in dirs.items():
        write(directory / "flash.yaml", f"extends: flash\ndescription: from {origin}\n")
    for origin, directory in dirs.items():  # peel the winner off, one directory at a time
        profile = load_profile("flash", [str(dirs["profile-dir"])])
        assert (profile.origin, profile.description) == (origin, f"from {origin}")
        (directory / "flash.yaml").unlink()
    assert load_profile("flash").origin == "builtin"


def test_repo_profiles_dir_as_cwd_stays_builtin(monkeypatch):
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)  # ./profiles is then the built-in directory: listed once, as builtin
    assert [o for _, o in search_path()].count("builtin") == 1 and "cwd" not in [o for _, o in search_path()]
    assert [(e.name, e.origin) for e in profiles.list_profiles() if e.name == "flash"] == [
        ("flash", "builtin")
    ]


def test_env_path_lists_several_directories(tmp_path, monkeypatch):
    write(tmp_path / "b" / "mine.yaml", "extends: tiny\ndescription: from b\n")
    write(tmp_path / "c" / "mine.yaml", "extends: tiny\ndescription: from c\n")
    monkeypatch.setenv("DSV4SERVE_PROFILE_PATH", f"{tmp_path / 'a'}::{tmp_path / 'b'}:{tmp_path / 'c'}")
    assert load_profile("mine").description == "from b"


def test_user_profile_shadows_builtin_and_list_shows_both(run_cli, user_dir):
    write(user_dir / "flash.yaml", "extends: flash\nserve:\n  max_model_len: 65536\n")
    data = json.loads(run_cli("profiles", "list", "--json").stdout)
    flash = [e for e in data["profiles"] if e["name"] == "flash"]
    assert [e["origin"] for e in flash] == ["user", "builtin"]
    assert flash[0]["shadows"] == [flash[1]["path"]] and flash[1]["shadowed_by"] == flash[0]["path"]
    text = run_cli("profiles", "list").stdout
    assert "flash (shadowed)" in text and "user" in text


def test_profile_extending_its_own_name_extends_the_next_one_down(user_dir):
    write(user_dir / "flash.yaml", "extends: flash\nserve:\n  max_model_len: 65536\n")
    write(Path.cwd() / "profiles" / "flash.yaml", "extends: flash\nserve:\n  gpu_memory_utilization: 0.8\n")
    profile = load_profile("flash")
    assert profile.origin == "cwd" and profile.extends == ("flash", "flash")
    assert (profile.serve.max_model_len, profile.serve.gpu_memory_utilization) == (65536, 0.8)
    assert profile.model.layers == 43  # from the built-in at the bottom of the chain


def test_extending_own_name_with_nothing_below_is_an_error(run_cli, user_dir):
    path = write(user_dir / "solo.yaml", "extends: solo\n")
    result = run_cli("profiles", "show", "solo")
    assert result.exit_code == 2
    assert f"{path}:1: extends: parent profile 'solo' not found below this one" in result.stderr


def test_list_marks_a_broken_profile_without_failing(run_cli, user_dir):
    write(user_dir / "broken.yaml", "extends: flash\nserve:\n  block_size: -1\n")
    result = run_cli("profiles", "list")
    assert result.exit_code == 0
    assert "invalid:" in result.stdout and "serve.block_size" in result.stdout


def test_yml_suffix_and_profile_dir_option(run_cli, tmp_path):
    write(tmp_path / "extra" / "small.yml", "extends: tiny\ndescription: small one\n")
    result = run_cli("profiles", "show", "small", "--profile-dir", str(tmp_path / "extra"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["origin"] == "profile-dir"


# --- extends and file paths ----------------------------------------------------------------------


def test_extends_chain_deep_merges_and_lists_replace(tmp_path):
    write(tmp_path / "base.yaml", "extends: pro\nserve:\n  env: {A: '1', B: '2'}\n  extra_args: [--x]\n")
    child = write(
        tmp_path / "sub" / "child.yaml",
        "extends: ../base.yaml\nserve:\n  env: {B: '3', C: '4'}\n  extra_args: [--y]\n"
        "model:\n  revision: abc\n",
    )
    profile = load_profile(str(child))
    assert profile.name == "child" and profile.extends == ("base", "pro") and profile.origin == "path"
    assert profile.serve.env == (("A", "1"), ("B", "3"), ("C", "4"))
    assert profile.serve.extra_args == ("--y",)
    assert profile.model.revision == "abc" and profile.model.repo == "deepseek-ai/DeepSeek-V4-Pro-0813"
    assert profile.serve.max_model_len == 200000 and profile.hardware == load_profile("pro").hardware


def test_child_naming_its_own_weights_drops_the_parents_source(tmp_path):
    path = write(tmp_path / "local.yaml", "extends: flash\nmodel:\n  path: /models/flash\n")
    model = load_profile(str(path)).model
    assert (model.path, model.repo, model.revision) == ("/models/flash", None, None)


def test_null_in_a_child_clears_the_inherited_value(tmp_path):
    path = write(
        tmp_path / "hubtiny.yaml",
        "extends: tiny\nmodel:\n  generate: null\n  repo: me/tiny\nserve:\n  dtype: null\n",
    )
    profile = load_profile(str(path))
    assert (profile.model.generate, profile.model.repo, profile.serve.dtype) == (None, "me/tiny", None)
    assert profile.model.layers == load_profile("tiny").model.layers  # the rest is still inherited
    path = write(tmp_path / "bare.yaml", "extends: flash\nhardware: null\nserve:\n  env: null\n")
    profile = load_profile(str(path))
    assert (profile.hardware, profile.serve.env) == ((), ())  # the fields' defaults


def test_generate_null_without_an_inherited_generate_keeps_the_parents_source(tmp_path):
    path = write(tmp_path / "mine.yaml", "extends: flash\nmodel: {generate: null}\n")
    model, flash = load_profile(str(path)).model, load_profile("flash").model
    assert (model.generate, model.repo, model.revision) == (None, flash.repo, flash.revision)


def test_generate_null_alone_names_the_null_line(run_cli, tmp_path):
    path = write(tmp_path / "nosource.yaml", "extends: tiny\ndescription: x\nmodel: {generate: null}\n")
    result = run_cli("profiles", "validate", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: model.generate: null clears the inherited generate" in result.stdout
    assert "missing required field" not in result.stdout


def test_relative_path_from_cwd_works_where_a_name_does(run_cli):
    write(Path("mine.yaml"), "extends: tiny\n")
    result = run_cli("profiles", "show", "mine.yaml", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["extends"] == ["tiny"]


def test_extends_cycle_names_the_chain(run_cli, tmp_path):
    write(tmp_path / "a.yaml", "extends: b\n")
    b = write(tmp_path / "b.yaml", "description: b\nextends: a\n")
    result = run_cli("profiles", "show", "a", "--profile-dir", str(tmp_path))
    assert result.exit_code == 2
    assert f"{b}:2: extends: cycle: a -> b -> a" in result.stderr


def test_error_in_parent_names_the_parent_file(tmp_path):
    parent = write(tmp_path / "parent.yaml", "extends: flash\nserve:\n  block_size: 0\n")
    child = write(tmp_path / "child.yaml", "extends: ./parent.yaml\n")
    with pytest.raises(ProfileError, match=rf"{parent}:3: serve.block_size: must be positive"):
        load_profile(str(child))


# --- validate --------------------------------------------------------------------------------------


def test_validate_reports_each_file_and_exits_2_on_any_failure(run_cli, tmp_path):
    good = write(tmp_path / "good.yaml", "extends: flash\n")
    bad = write(tmp_path / "bad.yaml", "extends: flash\nserve:\n  block_size: 0\n")
    result = run_cli("profiles", "validate", str(good), str(bad), "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert [(r["file"], r["ok"]) for r in report["results"]] == [(str(good), True), (str(bad), False)]
    assert "serve.block_size" in report["results"][1]["error"] and report["results"][1]["hint"]
    text = run_cli("profiles", "validate", str(good), str(bad)).stdout
    assert f"OK    {good}" in text and f"FAIL  {bad}:3: serve.block_size" in text


# --- start-up cost -----------------------------------------------------------------------------------


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys, dsv4serve.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('vllm', 'torch', 'pynvml', 'huggingface_hub') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage" in out and "profiles" in out
    assert out.splitlines()[-1] == "HEAVY="
