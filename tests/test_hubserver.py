"""The local hub answers like the hub: Range (206/416), error codes, gated access, byte counters."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.hubserver import HubServer


@pytest.fixture
def hub():
    with HubServer() as server:
        server.add_repo("o/r", {"a.bin": bytes(range(256)) * 4, "c.json": b"{}"})
        server.add_repo("o/gated", {"c.json": b"{}"}, gated_tokens={"tok"})
        yield server


def get(url: str, headers: dict | None = None, method: str = "GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_range_requests(hub):
    url = f"{hub.url}/o/r/resolve/main/a.bin"
    status, headers, body = get(url, {"Range": "bytes=1000-"})
    assert status == 206 and body == (bytes(range(256)) * 4)[1000:]
    assert headers["Content-Range"] == "bytes 1000-1023/1024"
    assert get(url, {"Range": "bytes=1024-"})[0] == 416
    status, headers, body = get(url, method="HEAD")
    assert status == 200 and headers["Content-Length"] == "1024" and body == b""
    assert headers["X-Linked-Size"] == "1024" and headers["X-Repo-Commit"] == hub.repos["o/r"].refs["main"]
    assert hub.bytes_served["o/r/a.bin"] == 24


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/o/nope/resolve/main/c.json", 404, "RepoNotFound"),
        ("/o/r/resolve/v2/c.json", 404, "RevisionNotFound"),
        ("/o/r/resolve/main/nope.json", 404, "EntryNotFound"),
        ("/api/models/o/r/revision/v2", 404, "RevisionNotFound"),
        ("/o/gated/resolve/main/c.json", 401, "GatedRepo"),
    ],
)
def test_errors(hub, path, status, code):
    got, headers, _ = get(hub.url + path)
    assert (got, headers.get("X-Error-Code")) == (status, code)


def test_gated_access(hub):
    url = f"{hub.url}/o/gated/resolve/main/c.json"
    assert get(url, {"Authorization": "Bearer other"})[0] == 403
    assert get(url, {"Authorization": "Bearer tok"})[0] == 200


def test_info_with_sizes(hub):
    _, _, body = get(f"{hub.url}/api/models/o/r/revision/main?blobs=true")
    info = json.loads(body)
    sizes = {s["rfilename"]: s["size"] for s in info["siblings"]}
    assert sizes == {"a.bin": 1024, "c.json": 2} and info["sha"] == hub.repos["o/r"].refs["main"]
    tree = json.loads(get(f"{hub.url}/api/models/o/r/tree/main?recursive=true")[2])
    assert {e["path"]: e.get("lfs", {}).get("size") for e in tree} == {"a.bin": 1024, "c.json": None}
