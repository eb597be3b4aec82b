"""A small hub-compatible HTTP server (standard library only) for offline tests and the bench.

It speaks the part of the Hugging Face hub protocol that huggingface_hub 2.x uses to download a model:
revision info (`/api/models/{repo}[/revision/{rev}]`, sizes with `blobs=true`), the file tree
(`/api/models/{repo}/tree/{rev}[/{path}]`), HEAD/GET `/{repo}/resolve/{rev}/{file}` with
X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size for LFS files, Content-Length and Range (206/416),
and the hub's errors (404 + X-Error-Code RepoNotFound/RevisionNotFound/EntryNotFound; 401/403
GatedRepo for gated repos). It counts requests and bytes served per file, and can cut a response
after N bytes, slow a file down or fail the next requests for a file, to simulate an interrupted download.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
CHUNK = 1 << 20


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    declared: dict[str, int] = field(default_factory=dict)  # sizes the listing claims (disk tests)

    def entry(self, path: str) -> dict:
        data = self.files[path]
        size = self.declared.get(path, len(data))
        info: dict = {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": size}
        if is_lfs(path, data):
            info["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
        return info


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    gated_tokens: frozenset[str] | None = None  # None: public; else tokens that were granted access

    def resolve(self, rev: str) -> Commit | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > CHUNK


class HubServer:
    """Threaded hub on 127.0.0.1; `url` goes into HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.bytes_served: Counter[str] = Counter()  # "repo/file" -> body bytes sent by GET
        self.cut_after: dict[str, list[int]] = {}  # "repo/file" -> byte counts for the next GETs
        self.fail_next: Counter[str] = Counter()  # "repo/file" -> answer 503 this many times
        self.chunk_delay: dict[str, float] = {}  # "repo/file" -> seconds to wait before each 1 MiB
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content -----------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        revision: str = "main",
        gated_tokens: set[str] | None = None,
        declared_sizes: dict[str, int] | None = None,
    ) -> str:
        """Publish FILES as a commit of REPO_ID reachable as REVISION; returns the commit sha."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
        sha = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[sha] = Commit(sha, dict(files), dict(declared_sizes or {}))
        repo.refs[revision] = sha
        if gated_tokens is not None:
            repo.gated_tokens = frozenset(gated_tokens)
        return sha

    def publish_dir(self, repo_id: str, directory: str | Path, *, revision: str = "main") -> str:
        """Publish every file under DIRECTORY (e.g. the generated tiny checkpoint) as a repo."""
        root = Path(directory)
        files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(root).parts
        }
        return self.add_repo(repo_id, files, revision=revision)

    def resolves(self, repo_file: str) -> list[tuple[str, str, str | None]]:
        """The GET requests made for one 'repo/file'."""
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith("/" + repo_file.split("/", 2)[2])]

    def downloads(self) -> int:
        return sum(1 for m, p, _ in self.requests if m == "GET" and "/resolve/" in p)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing -----------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = url.path
        with self.hub.lock:
            self.hub.requests.append((self.command, unquote(path), self.headers.get("Range")))
        if m := _API.match(path):
            repo_id, kind, rev, sub = m.group(1), m.group(2), m.group(3), m.group(4)
            query = parse_qs(url.query)
            self._api(repo_id, kind, unquote(rev or "main"), unquote(sub or ""), query, head)
        elif m := _RESOLVE.match(path):
            self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)), head)
        else:
            self._error(404, "", "Not found")

    def _repo_commit(self, repo_id: str, rev: str) -> tuple[Repo, Commit] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            return None
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, commit

    def _api(self, repo_id: str, kind: str | None, rev: str, sub: str, query: dict, head: bool) -> None:
        found = self._repo_commit(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        if kind == "tree":
            prefix = sub.rstrip("/") + "/" if sub else ""
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            paths = [p for p in sorted(commit.files) if p.startswith(prefix)]
            if not recursive:
                paths = [p for p in paths if "/" not in p[len(prefix) :]]
            self._json([commit.entry(p) for p in paths], head)
            return
        blobs = query.get("blobs", ["False"])[0].lower() == "true"
        siblings = []
        for p in sorted(commit.files):
            sib: dict = {"rfilename": p}
            if blobs:
                e = commit.entry(p)
                sib.update(size=e["size"], blobId=e["oid"])
                if "lfs" in e:
                    sib["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}
            siblings.append(sib)
        body = {
            "_id": repo_id,
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit.sha,
            "private": False,
            "gated": "manual" if repo.gated_tokens is not None else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        self._json(body, head)

    def _resolve(self, repo_id: str, rev: str, filename: str, head: bool) -> None:
        found = self._repo_commit(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        if repo.gated_tokens is not None:
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
            if token not in repo.gated_tokens:
                status = 403 if token else 401
                self._error(
                    status,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                )
                return
        if filename not in commit.files:
            self._error(404, "EntryNotFound", f"{filename} does not exist on {rev}", commit=commit.sha)
            return
        key = f"{repo_id}/{filename}"
        if not head:
            with self.hub.lock:  # pending cuts come first: "cut, then fail the retries"
                failing = self.hub.fail_next[key] > 0 and not self.hub.cut_after.get(key)
                if failing:
                    self.hub.fail_next[key] -= 1
            if failing:
                self._error(503, "", "Service unavailable (test)")
                return
        data = commit.files[filename]
        entry = commit.entry(filename)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if rng and (m := _RANGE.match(rng.strip())):
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if head:
            return
        self._send_body(key, memoryview(data)[start : end + 1])

    def _send_body(self, key: str, body: memoryview) -> None:
        with self.hub.lock:
            cuts = self.hub.cut_after.get(key)
            limit = cuts.pop(0) if cuts else None
        if limit is not None:
            body = body[:limit]
        sent = 0
        delay = self.hub.chunk_delay.get(key, 0.0)
        try:
            for off in range(0, len(body), CHUNK):
                chunk = body[off : off + CHUNK]
                if delay:
                    time.sleep(delay)
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.hub.lock:
                self.hub.bytes_served[key] += sent
        if limit is not None:
            self.wfile.flush()
            self.close_connection = True

    # -- responses ---------------------------------------------------------------------------
    def _json(self, body: object, head: bool) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
