"""`up`/`smoke` with the weights on a hub (the local hub-compatible server), not a generated path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dsv4serve.weights.tiny import ensure_checkpoint
from tests.hubserver import HubServer
from tests.test_launch import Cli, assert_all_gone, free_port

REPO_ID = "local/tiny-hub"


@pytest.fixture
def hub_tiny(tmp_path, monkeypatch):
    """The tiny checkpoint published on the local hub, and a user profile that serves it from there."""
    src = ensure_checkpoint("tiny", root=tmp_path / "generated")
    with HubServer() as hub:
        sha = hub.publish_dir(REPO_ID, src)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        profile = tmp_path / "hubtiny.yaml"
        profile.write_text(f"name: hubtiny\nextends: tiny\nmodel:\n  repo: {REPO_ID}\n  revision: {sha}\n")
        yield hub, str(profile), sha


def snapshot_dir(sha: str) -> Path:
    return Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / sha


def run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    cli = Cli(argv)
    code = cli.finish(timeout)
    return code, "".join(cli.out), "".join(cli.err)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_up_tiny_from_the_local_hub(dsv4serve_cmd, hub_tiny):
    hub, profile, sha = hub_tiny
    port = free_port()

    # Nothing local yet and downloads forbidden: refused with what to run, vLLM never started.
    code, _, err = run([*dsv4serve_cmd, "up", profile, "--no-download", "--port", str(port)], 60)
    assert code == 4, err
    assert "not in the cache" in err and "dsv4serve download" in err and "vLLM started" not in err

    # The real path: download from the hub, start, one chat completion, clean stop.
    code, out, err = run([*dsv4serve_cmd, "smoke", profile, "--json", "--port", str(port)], 300)
    assert code == 0, err[-4000:]
    result = json.loads(out)
    assert result["reply"].strip() and result["stopped_cleanly"] is True
    assert_all_gone(result["pid"], port=port)
    assert f"{snapshot_dir(sha)}" in err  # vLLM loaded the hub snapshot, not the generated directory
    served = hub.resolves(f"{REPO_ID}/model.safetensors")
    assert any(method == "GET" for method, _, _ in served)

    # A truncated shard in the cache: `up` refuses it by name before starting anything.
    weights = (snapshot_dir(sha) / "model.safetensors").resolve()
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    code, _, err = run([*dsv4serve_cmd, "up", profile, "--no-download", "--port", str(port)], 60)
    assert code == 4, err
    assert "model.safetensors" in err and "vLLM started" not in err
