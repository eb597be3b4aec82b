"""weights.py against the local hub (tests/hubserver.py): download, resume, disk check, errors, offline."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from dsv4serve.errors import EXIT_DOWNLOAD, DownloadError
from dsv4serve.profiles.types import Model, Profile, Serve
from dsv4serve.weights.fetch import download_weights, ensure_complete, fetch_weights, missing_files
from tests.hubserver import HubServer

REPO_ID = "acme/tiny-v4"
PATTERNS = ("*.safetensors", "*.json")
SECRET = "hf_SeCrEt_token_value_1234567890"


def safetensors(nbytes: int, tensors: int = 2) -> bytes:
    """A valid safetensors file of U8 tensors (random content)."""
    each = nbytes // tensors
    header = {
        f"t{i}": {"dtype": "U8", "shape": [each], "data_offsets": [i * each, (i + 1) * each]}
        for i in range(tensors)
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + os.urandom(each * tensors)


def checkpoint(shards: int = 3, shard_bytes: int = 300_000) -> dict[str, bytes]:
    files = {
        f"model-{i:05d}-of-{shards:05d}.safetensors": safetensors(shard_bytes) for i in range(1, shards + 1)
    }
    weight_map = {f"layer{i}.w": name for i, name in enumerate(files)}
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = b'{"architectures": ["DeepseekV3ForCausalLM"]}'
    files["README.md"] = b"not wanted by the allow patterns"
    return files


def profile(repo: str = REPO_ID, revision: str | None = None, patterns=PATTERNS) -> Profile:
    return Profile(
        name="t",
        description="test",
        model=Model(repo=repo, revision=revision, allow_patterns=patterns),
        serve=Serve(),
    )


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def repo(hub):
    files = checkpoint()
    sha = hub.add_repo(REPO_ID, files)
    return files, sha


@pytest.fixture
def profile_yaml(tmp_path):
    """A user profile that `extends: tiny` and points it at the local hub's repo."""
    path = tmp_path / "hubtiny.yaml"
    path.write_text(
        "extends: tiny\nname: hubtiny\nmodel:\n"
        f"  repo: {REPO_ID}\n  allow_patterns: ['*.safetensors', '*.json']\n"
    )
    return str(path)


def shard(files, i=1):
    return next(n for n in files if n.startswith(f"model-{i:05d}"))


def test_full_download_into_hf_cache(repo, hub, isolated_home):
    files, sha = repo
    result = download_weights(profile(), progress=False)
    snap = isolated_home / ".cache" / "huggingface" / "hub" / "models--acme--tiny-v4" / "snapshots" / sha
    assert result.path == snap and result.commit == sha
    for name, data in files.items():
        if name == "README.md":
            assert not (snap / name).exists()
        else:
            assert (snap / name).read_bytes() == data
            assert (snap / name).is_symlink()  # standard cache layout: snapshot -> blob
    assert (snap.parent.parent / "refs" / "main").read_text() == sha
    wanted = sum(len(d) for n, d in files.items() if n != "README.md")
    assert result.downloaded_bytes == wanted == result.total_bytes
    assert missing_files(snap, PATTERNS) == []
    before = hub.downloads()
    again = download_weights(profile(), progress=False)
    assert again.path == snap and again.downloaded_bytes == 0 and hub.downloads() == before


def test_hf_cli_reads_what_we_downloaded(repo, hub):
    """The layout is the hub's own: huggingface_hub finds it offline (local_files_only)."""
    from huggingface_hub import snapshot_download

    path = fetch_weights(profile(), progress=False)
    found = snapshot_download(
        REPO_ID, local_files_only=True, cache_dir=str(path.parents[2]), allow_patterns=list(PATTERNS)
    )
    assert Path(found) == path


def test_cli_download_json(repo, hub, run_cli, profile_yaml):
    files, sha = repo
    res = run_cli("download", profile_yaml, "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["commit"] == sha and data["files"] == len(files) - 1
    assert Path(data["path"], "config.json").is_file()


def test_download_to_dir(repo, hub, tmp_path, run_cli, profile_yaml):
    files, _ = repo
    res = run_cli("download", profile_yaml, "--dir", str(tmp_path / "w"))
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "w" / shard(files)).read_bytes() == files[shard(files)]
    assert missing_files(tmp_path / "w", PATTERNS) == []


def test_download_to_dir_offline_reports_the_commit(repo, hub, tmp_path, run_cli, profile_yaml, monkeypatch):
    _, sha = repo
    assert run_cli("download", profile_yaml, "--dir", str(tmp_path / "w")).exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli("download", profile_yaml, "--dir", str(tmp_path / "w"), "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["source"] == "cache" and out["commit"] == sha  # not the directory's name


@pytest.fixture
def big_repo(hub):
    """A repo whose second shard spans several of the client's 10 MiB read chunks."""
    files = checkpoint()
    files[shard(files, 2)] = safetensors(25_000_000)
    hub.add_repo(REPO_ID, files)
    return files, f"{REPO_ID}/{shard(files, 2)}"


def kept(cut: int) -> int:
    """Bytes the client has written to disk when the connection drops after CUT bytes.

    huggingface_hub reads the body in DOWNLOAD_CHUNK_SIZE (10 MiB) chunks and writes whole chunks, so the
    part of the last chunk still in its read buffer is lost and fetched again; everything on disk is not.
    """
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    return cut // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE


def test_interrupted_connection_resumes_in_process(big_repo, hub):
    files, key = big_repo
    name = key.split("/", 2)[2]
    cut = 15_000_000
    hub.cut_after[key] = [cut]  # the first GET stops after 15 MB
    path = fetch_weights(profile(), progress=False)
    assert (path / name).read_bytes() == files[name]
    assert [r[2] for r in hub.resolves(key)] == [None, f"bytes={kept(cut)}-"]
    assert hub.bytes_served[key] == cut + len(files[name]) - kept(cut)  # written bytes not sent again


def test_interrupted_download_resumes_next_run(big_repo, hub, run_cli, profile_yaml):
    files, key = big_repo
    name = key.split("/", 2)[2]
    cut = 23_000_000
    hub.cut_after[key] = [cut]
    hub.fail_next[key] = 1  # the in-process retry fails too: the run ends with a partial file
    first = run_cli("download", profile_yaml)
    assert first.exit_code == EXIT_DOWNLOAD
    assert "503" in first.stderr and "resumes" in first.stderr
    partials = list(Path(os.environ["HF_HOME"]).rglob("*.incomplete"))
    assert [p.stat().st_size for p in partials] == [kept(cut)]  # kept for the next run
    served_before = hub.bytes_served[key]

    second = run_cli("download", profile_yaml, "--json")
    assert second.exit_code == 0, second.stderr
    assert hub.resolves(key)[-1][2] == f"bytes={kept(cut)}-"
    assert hub.bytes_served[key] - served_before == len(files[name]) - kept(cut)  # only the rest
    assert json.loads(second.stdout)["reused_bytes"] >= kept(cut)
    assert missing_files(json.loads(second.stdout)["path"], PATTERNS) == []


def test_ctrl_c_stops_transfers_in_flight(hub, monkeypatch, isolated_home):
    from huggingface_hub import constants

    from dsv4serve.weights import hub as hub_download

    files = {"config.json": b"{}", "model.safetensors": safetensors(8 << 20)}
    hub.add_repo(REPO_ID, files)
    key = f"{REPO_ID}/model.safetensors"
    hub.chunk_delay[key] = 0.5  # 8 MiB in 4 s
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)
    real_wait = hub_download.wait

    def interrupted(futures, return_when):
        real_wait(futures, timeout=1.2)
        raise KeyboardInterrupt

    monkeypatch.setattr(hub_download, "wait", interrupted)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        download_weights(profile(), progress=False)
    assert time.monotonic() - t0 < 3.0  # not the whole file's 4 s
    [partial] = (isolated_home / ".cache").rglob("*.incomplete")
    kept_bytes = partial.stat().st_size
    assert 0 < kept_bytes < len(files["model.safetensors"])

    monkeypatch.setattr(hub_download, "wait", real_wait)
    hub.chunk_delay.clear()
    path = fetch_weights(profile(), progress=False)
    assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert hub.resolves(key)[-1][2] == f"bytes={kept_bytes}-"


def test_snapshot_link_made_meanwhile_by_another_run(repo, hub, monkeypatch):
    from dsv4serve.weights import hub as hub_download

    files, sha = repo
    download_weights(profile(), progress=False)
    snap = Path(os.environ["HF_HOME"]) / "hub" / "models--acme--tiny-v4" / "snapshots" / sha
    (snap / "config.json").unlink()
    real_symlink = os.symlink

    def racing_symlink(src, dst, *args, **kwargs):
        # Another run creates the same snapshot link between our check and our symlink.
        if not (snap / "config.json").is_symlink():
            real_symlink(src, snap / "config.json")
        return real_symlink(src, dst, *args, **kwargs)

    monkeypatch.setattr(hub_download.os, "symlink", racing_symlink)
    path = fetch_weights(profile(), progress=False)
    assert (path / "config.json").read_bytes() == files["config.json"]
    assert sorted(p.name for p in snap.iterdir() if p.name.startswith(".")) == []


def test_not_enough_disk_refused_before_first_byte(hub, run_cli, profile_yaml):
    files = checkpoint()
    # The listing declares a 1 PiB shard: no disk here has that free, so the check must refuse.
    hub.add_repo(REPO_ID, files, declared_sizes={shard(files): 2**50})
    res = run_cli("download", profile_yaml)
    assert res.exit_code == EXIT_DOWNLOAD
    assert "not enough disk space" in res.stderr and "GiB still to download" in res.stderr
    assert "GiB free on" in res.stderr
    assert not any("/resolve/" in p for _, p, _ in hub.requests)  # not one file request


def test_disk_full_during_download_keeps_partials(repo, hub, isolated_home):
    """A real ENOSPC: the shard's partial file is /dev/full, where every write fails with ENOSPC."""
    files, sha = repo
    import hashlib

    name = shard(files, 1)
    blobs = isolated_home / ".cache" / "huggingface" / "hub" / "models--acme--tiny-v4" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / (hashlib.sha256(files[name]).hexdigest() + ".incomplete")
    partial.symlink_to("/dev/full")
    with pytest.raises(DownloadError) as err:
        fetch_weights(profile(), progress=False)
    assert "disk full" in err.value.message and "partial files are kept" in err.value.hint
    assert partial.is_symlink()  # not deleted


@pytest.mark.parametrize("token", [None, "wrong-" + SECRET])
def test_gated_repo(hub, run_cli, profile_yaml, monkeypatch, token):
    hub.add_repo(REPO_ID, checkpoint(), gated_tokens={"granted-token"})
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    res = run_cli("download", profile_yaml)
    assert res.exit_code == EXIT_DOWNLOAD
    assert "gated" in res.stderr and "accept the licence" in res.stderr and "HF_TOKEN" in res.stderr
    assert SECRET not in res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 2  # one line of message, one of hint


def test_gated_repo_with_access(hub, monkeypatch):
    hub.add_repo(REPO_ID, checkpoint(), gated_tokens={SECRET})
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert missing_files(fetch_weights(profile(), progress=False), PATTERNS) == []


def test_missing_repo(hub, run_cli, profile_yaml):
    res = run_cli("download", profile_yaml)
    assert res.exit_code == EXIT_DOWNLOAD
    assert f"repository {REPO_ID} not found" in res.stderr


def test_missing_revision(repo, hub, run_cli, profile_yaml):
    res = run_cli("download", profile_yaml, "--revision", "v9")
    assert res.exit_code == EXIT_DOWNLOAD
    assert "revision v9 not found" in res.stderr


def test_network_down(monkeypatch, run_cli, profile_yaml):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    res = run_cli("download", profile_yaml)
    assert res.exit_code == EXIT_DOWNLOAD
    assert "cannot reach the hub" in res.stderr and SECRET not in res.stderr


def test_offline_with_complete_cache(repo, hub, monkeypatch):
    path = fetch_weights(profile(), progress=False)
    count = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_weights(profile(), progress=False) == path
    assert len(hub.requests) == count  # no traffic at all


def test_offline_without_cache(repo, hub, monkeypatch, run_cli, profile_yaml):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli("download", profile_yaml)
    assert res.exit_code == EXIT_DOWNLOAD
    assert "not in the cache" in res.stderr and "HF_HUB_OFFLINE" in res.stderr
    assert hub.requests == []


def test_offline_with_incomplete_cache_lists_missing(repo, hub, monkeypatch):
    files, _ = repo
    path = fetch_weights(profile(), progress=False)
    (path / shard(files, 2)).resolve().unlink()  # the blob goes; the snapshot link dangles
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        fetch_weights(profile(), progress=False)
    assert shard(files, 2) in err.value.message and "HF_HUB_OFFLINE" in err.value.message


def test_no_download_refuses_incomplete_weights(repo, hub):
    files, _ = repo
    path = fetch_weights(profile(), progress=False)
    blob = (path / shard(files, 3)).resolve()
    blob.write_bytes(blob.read_bytes()[:1000])  # cut short
    with pytest.raises(DownloadError) as err:
        fetch_weights(profile(), allow_download=False)
    assert shard(files, 3) in err.value.message and "dsv4serve download" in err.value.hint
    # and a normal run repairs it
    assert missing_files(fetch_weights(profile(), progress=False), PATTERNS) == []


def test_missing_files_from_index_and_headers(tmp_path):
    files = checkpoint()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert missing_files(tmp_path) == []
    ensure_complete(tmp_path)
    (tmp_path / shard(files, 1)).unlink()
    short = tmp_path / shard(files, 2)
    short.write_bytes(short.read_bytes()[:-1])  # header says longer: truncated
    assert missing_files(tmp_path) == [shard(files, 1), shard(files, 2)]
    with pytest.raises(DownloadError) as err:
        ensure_complete(tmp_path)
    assert err.value.exit_code == EXIT_DOWNLOAD and shard(files, 1) in err.value.message


def test_missing_files_without_weights(tmp_path):
    assert missing_files(tmp_path) == ["*.safetensors", "config.json"]


def test_model_path_is_checked(tmp_path):
    files = checkpoint()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    local = Profile(name="l", description="", model=Model(path=str(tmp_path)), serve=Serve())
    assert fetch_weights(local) == tmp_path
    gone = Profile(name="l", description="", model=Model(path=str(tmp_path / "nope")), serve=Serve())
    with pytest.raises(DownloadError, match="not a directory"):
        fetch_weights(gone)


def test_published_directory_is_served(hub, tmp_path):
    """tests.hubserver.publish_dir serves any checkpoint directory (the launcher uses it for `up tiny`)."""
    src = tmp_path / "ckpt"
    src.mkdir()
    for name, data in checkpoint().items():
        (src / name).write_bytes(data)
    hub.publish_dir("local/ckpt", src)
    path = fetch_weights(profile("local/ckpt", patterns=()), progress=False)
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in src.iterdir())


class Counter:
    """A Progress sink that records what the bar would show."""

    def __init__(self) -> None:
        self.total = self.done = self.advanced = 0
        self.finished = False

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done

    def advance(self, n: int) -> None:
        self.advanced += n

    def finish(self) -> None:
        self.finished = True


def test_progress_reports_bytes(repo, hub):
    files, _ = repo
    sink = Counter()
    result = download_weights(profile(), progress=sink)
    assert sink.total == result.total_bytes == sum(len(d) for n, d in files.items() if n != "README.md")
    assert sink.done == 0 and sink.advanced == result.downloaded_bytes == sink.total and sink.finished
