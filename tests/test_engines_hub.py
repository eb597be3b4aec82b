"""llama.cpp's weights from the hub (the real huggingface_hub client against tests/hubserver.py): one
quant's shards only, their sizes from the hub's listing before the first byte, offline reuse."""

from __future__ import annotations

import json

import pytest

from dsv4serve.errors import HardwareError
from dsv4serve.profiles.load import load_profile
from dsv4serve.weights.gguf import fetch_gguf
from tests.hubserver import HubServer

REPO_ID = "test-org/Flash-GGUF"
FILES = {
    "Q4_K/Flash-Q4_K-00001-of-00002.gguf": b"GGUF" + b"\x01" * 3000,
    "Q4_K/Flash-Q4_K-00002-of-00002.gguf": b"GGUF" + b"\x02" * 2000,
    "Flash-Q8_0.gguf": b"GGUF" + b"\x03" * 9000,
    "README.md": b"# test\n",
}


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:  # huggingface_hub talks to it through HF_ENDPOINT
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def gguf_profile(tmp_path):
    path = tmp_path / "flash-test-gguf.yaml"
    path.write_text(
        "name: flash-test-gguf\nextends: flash\nserve: {engine: llama.cpp}\n"
        f"model:\n  gguf:\n    repo: {REPO_ID}\n    quants:\n"
        "      - {name: Q8_0, pattern: '*Q8_0*.gguf', bytes: 9004}\n"
        "      - {name: Q4_K, pattern: 'Q4_K/*.gguf', bytes: 5008}\n"
    )
    return str(path)


def test_download_fetches_one_quants_shards_only(hub, gguf_profile, run_cli):
    hub.add_repo(REPO_ID, FILES)
    result = run_cli("download", gguf_profile, "--quant", "Q4_K", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["files"] == 2 and data["total_bytes"] == 3004 + 2004
    assert data["path"].endswith("Q4_K/Flash-Q4_K-00001-of-00002.gguf")
    served = {key.split("/", 2)[2] for key, n in hub.bytes_served.items() if n}
    assert served == {"Q4_K/Flash-Q4_K-00001-of-00002.gguf", "Q4_K/Flash-Q4_K-00002-of-00002.gguf"}
    # offline, the same quant is found complete on disk; the other one is not there
    again = run_cli("download", gguf_profile, "--quant", "Q4_K", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["downloaded_bytes"] == 0


def test_the_largest_quant_that_fits_is_the_default(hub, gguf_profile, run_cli):
    hub.add_repo(REPO_ID, FILES)
    data = json.loads(run_cli("download", gguf_profile, "--json").stdout)
    assert data["path"].endswith("Flash-Q8_0.gguf") and data["files"] == 1


def test_the_listings_size_is_seen_before_the_first_byte(hub, gguf_profile):
    """A stand-in the listing contradicts: the re-plan refuses and nothing is downloaded."""
    hub.add_repo(REPO_ID, FILES, declared_sizes={"Q4_K/Flash-Q4_K-00001-of-00002.gguf": 10 * 2**40})
    seen = []

    def replan(total: int) -> None:
        seen.append(total)
        raise HardwareError("does not fit with the real size")

    with pytest.raises(HardwareError):
        fetch_gguf(load_profile(gguf_profile), "Q4_K", "Q4_K/*.gguf", progress=False, before_download=replan)
    assert seen == [10 * 2**40 + 2004] and not any(hub.bytes_served.values())


def test_a_pattern_that_matches_nothing_is_a_download_error(hub, gguf_profile, run_cli):
    hub.add_repo(REPO_ID, {"README.md": b"no ggufs\n"})
    result = run_cli("download", gguf_profile, "--quant", "Q4_K")
    assert result.exit_code == 4 and "Q4_K" in result.stderr and "Traceback" not in result.stderr


def test_no_download_with_nothing_on_disk_is_exit_4(hub, gguf_profile, monkeypatch, run_cli):
    hub.add_repo(REPO_ID, FILES)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli("download", gguf_profile, "--quant", "Q4_K")
    assert result.exit_code == 4 and "dsv4serve download" in result.stderr
