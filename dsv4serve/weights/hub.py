"""Hub transfers for weights.py: file list and sizes, the disk check, resumable per-file downloads.

huggingface_hub (>= 1.x) downloads each file into a process-unique temporary file and deletes it when the
download fails, so an interrupted multi-GiB shard restarts from zero. Here each file is fetched with the
library's own `http_get` (same HTTP client, headers, redirects and retries as `hf download`) into a
persistent `<blob>.incomplete` file that the next run continues with a Range request, then moved into
the standard cache layout (blobs/, snapshots/<commit>/, refs/, trees/) that `hf` and vLLM read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dsv4serve.errors import DownloadError

GIB = 1024**3
MAX_WORKERS = 8  # as snapshot_download / `hf download`


@dataclass(frozen=True)
class Hub:
    """Where and how to talk to the hub, read from the environment when the call is made."""

    endpoint: str
    token: str | None
    cache_dir: Path


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str  # git blob sha1
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        """The name the hub cache stores the file under (what HEAD returns as ETag/X-Linked-Etag)."""
        return self.lfs_sha256 or self.blob_id


@dataclass(frozen=True)
class Listing:
    commit: str
    files: tuple[RemoteFile, ...]  # every file of the repo at the commit
    wanted: tuple[RemoteFile, ...]  # those matching the profile's allow patterns


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def storage_folder(hub: Hub, repo: str) -> Path:
    return hub.cache_dir / ("models--" + repo.replace("/", "--"))


def list_files(hub: Hub, repo: str, revision: str, allow_patterns: Iterable[str]) -> Listing:
    """The repo's files with sizes at REVISION (one request), and those the profile wants."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    info = HfApi(endpoint=hub.endpoint, token=hub.token).model_info(
        repo, revision=revision, files_metadata=True
    )
    files = tuple(
        RemoteFile(s.rfilename, s.size or 0, s.blob_id or "", s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or ()
    )
    patterns = list(allow_patterns) or None
    names = set(filter_repo_objects([f.path for f in files], allow_patterns=patterns))
    return Listing(info.sha or revision, files, tuple(f for f in files if f.path in names))


class Target:
    """Where files go: the hub cache (blobs + snapshot symlinks) or a plain directory (--dir)."""

    def __init__(self, hub: Hub, repo: str, commit: str, local_dir: Path | None) -> None:
        self.hub, self.repo, self.commit, self.local_dir = hub, repo, commit, local_dir
        self.storage = storage_folder(hub, repo)
        self.root = local_dir if local_dir is not None else self.storage / "snapshots" / commit
        meta = local_dir / ".cache" / "huggingface" if local_dir is not None else self.storage
        self.meta = meta  # holds trees/<commit>.json (and download/ for --dir)

    def final(self, f: RemoteFile) -> Path:
        """The file as vLLM will read it."""
        return self.root / f.path

    def stored(self, f: RemoteFile) -> Path:
        """Where the bytes live (the blob for the cache layout)."""
        return self.final(f) if self.local_dir is not None else self.storage / "blobs" / f.etag

    def partial(self, f: RemoteFile) -> Path:
        if self.local_dir is not None:
            return self.meta / "download" / f"{f.path}.{f.etag}.incomplete"
        return self.storage / "blobs" / f"{f.etag}.incomplete"

    def lock(self, f: RemoteFile) -> Path:
        # The same lock hf_hub_download takes, so concurrent `hf download`s of the cache don't collide.
        name = "models--" + self.repo.replace("/", "--")
        return self.hub.cache_dir / ".locks" / name / f"{f.etag}.lock"

    def have(self, f: RemoteFile) -> bool:
        p = self.stored(f)
        return p.is_file() and p.stat().st_size == f.size

    def partial_size(self, f: RemoteFile) -> int:
        p = self.partial(f)
        return p.stat().st_size if p.is_file() else 0

    def link(self, f: RemoteFile) -> None:
        if self.local_dir is not None:
            return
        dst = self.final(f)
        dst.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(self.stored(f), dst.parent)
        if dst.is_symlink() and os.readlink(dst) == rel:
            return
        # A uniquely named link renamed over dst: another run linking the same file at the same moment
        # (outside the per-file lock) cannot make this fail with FileExistsError.
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.link")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(rel, tmp)
        os.replace(tmp, dst)

    def record(self, listing: Listing, revision: str) -> None:
        """Write refs/<revision> and the hub's tree cache (sizes for the completeness check)."""
        if self.local_dir is None and revision != listing.commit:
            ref = self.storage / "refs" / revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(listing.commit)
        entries = {}
        for f in listing.files:
            e: dict = {"size": f.size, "blob_id": f.blob_id}
            if f.lfs_sha256:
                e.update(lfs_sha256=f.lfs_sha256, lfs_size=f.size)
            entries[f.path] = e
        tree = self.meta / "trees" / f"{listing.commit}.json"
        tree.parent.mkdir(parents=True, exist_ok=True)
        tmp = tree.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"format_version": 1, "files": entries}, indent=1))
        os.replace(tmp, tree)


@dataclass(frozen=True)
class Budget:
    total: int  # bytes of the wanted files
    cached: int  # complete files already there
    partial: int  # bytes of .incomplete files a Range request continues from
    needed: int  # bytes still to fetch
    free: int  # free space where the files go


def check_disk(target: Target, wanted: Iterable[RemoteFile]) -> Budget:
    """Refuse, with the numbers, before the first byte when the files cannot fit."""
    wanted = list(wanted)
    cached = sum(f.size for f in wanted if target.have(f))
    partial = sum(min(target.partial_size(f), f.size) for f in wanted if not target.have(f))
    total = sum(f.size for f in wanted)
    needed = total - cached - partial
    probe = target.root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    budget = Budget(total, cached, partial, needed, free)
    if needed > free:
        raise DownloadError(
            f"not enough disk space for {target.repo}: {gib(needed)} still to download "
            f"({gib(total)} in all, {gib(cached + partial)} already there), "
            f"{gib(free)} free on {probe}",
            "free space there, or download elsewhere with --dir DIR (or HF_HUB_CACHE=DIR)",
        )
    return budget


ProgressFn = Callable[[int], None]


def download_all(target: Target, wanted: Iterable[RemoteFile], on_bytes: ProgressFn) -> int:
    """Fetch every wanted file not already complete; returns the bytes received."""
    wanted = list(wanted)
    todo = [f for f in wanted if not target.have(f)]
    for f in wanted:
        if target.have(f):
            target.link(f)
    received = [0]
    lock = threading.Lock()
    stopping = threading.Event()

    def count(n: int) -> None:
        if stopping.is_set():  # bytes already written stay in the .incomplete file for the next run
            raise _Stopped
        with lock:
            received[0] += n
        on_bytes(n)

    if not todo:
        return 0
    pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(todo)))
    try:
        futures = [pool.submit(_download_one, target, f, count) for f in todo]
        wait(futures, return_when="FIRST_EXCEPTION")
        for fut in futures:
            if fut.done() and fut.exception() is not None:
                raise fut.exception()
        for fut in futures:
            fut.result()
    finally:
        # On Ctrl-C or a failed file, the other transfers stop at their next chunk instead of
        # running to the end of their files while the user waits.
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return received[0]


class _Stopped(Exception):
    """Raised inside a transfer (through its progress callback) to end it early."""


def _download_one(target: Target, f: RemoteFile, on_bytes: ProgressFn) -> None:
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    hub = target.hub
    lock = target.lock(f)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if target.have(f):
            target.link(f)
            return
        url = hf_hub_url(target.repo, f.path, revision=target.commit, endpoint=hub.endpoint)
        meta = get_hf_file_metadata(url, token=hub.token, endpoint=hub.endpoint)
        headers = build_hf_headers(token=hub.token)
        location = meta.location or url
        if urlsplit(location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # a signed CDN url: never send the token elsewhere
        size = meta.size if meta.size is not None else f.size
        partial = target.partial(f)
        partial.parent.mkdir(parents=True, exist_ok=True)
        target.stored(f).parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "ab") as out:
            resume = out.tell()
            if resume > size:  # not ours to continue: start over
                out.truncate(0)
                resume = 0
            http_get(
                location,
                out,
                resume_size=resume,
                headers=headers,
                expected_size=size,
                tqdm_class=_bar_class(on_bytes),
            )
        os.replace(partial, target.stored(f))
        target.link(f)


def _bar_class(on_bytes: ProgressFn):
    """A tqdm-shaped class http_get drives; it forwards byte counts to ON_BYTES."""

    class _Bar:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def update(self, n: int | float | None = 1) -> None:
            on_bytes(int(n or 0))

        def close(self) -> None:
            pass

        def set_postfix_str(self, *args, **kwargs) -> None:
            pass

    return _Bar


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


# -- errors ------------------------------------------------------------------------------------


def hub_error(
    err: BaseException, repo: str, rev: str, hub: Hub, where: Path | None = None
) -> DownloadError | None:
    """One table from huggingface_hub / network / OS errors to a message and a hint; None if unknown."""
    import httpx2
    from huggingface_hub import errors as e

    token_hint = "set HF_TOKEN to a token that has access" if not hub.token else "check HF_TOKEN"
    table: list[tuple[tuple[type[BaseException], ...], str, str]] = [
        (
            (e.GatedRepoError,),
            f"{repo} is gated: your account has not been granted access",
            f"accept the licence on {hub.endpoint}/{repo}, then {token_hint}",
        ),
        (
            (e.RepositoryNotFoundError,),
            f"repository {repo} not found on {hub.endpoint} (or it is private)",
            f"check model.repo in the profile; for a private repo {token_hint}",
        ),
        (
            (e.RevisionNotFoundError,),
            f"revision {rev} not found in {repo}",
            "check model.revision or --revision (a branch, tag or 40-character commit)",
        ),
        (
            (e.RemoteEntryNotFoundError, e.EntryNotFoundError),
            f"a file listed for {repo}@{rev} is not on the hub",
            "the revision changed while downloading: pin model.revision to a commit and run again",
        ),
        (
            (e.OfflineModeIsEnabled, e.LocalEntryNotFoundError),
            f"{repo} is not complete in the cache and the hub cannot be used (offline)",
            "unset HF_HUB_OFFLINE and run `dsv4serve download` with network access",
        ),
        (
            (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, ConnectionError),
            f"cannot reach the hub at {hub.endpoint} ({type(err).__name__})",
            "check the network or HF_ENDPOINT; partial files are kept and the next run resumes",
        ),
        (
            (httpx2.TransportError,),
            f"the download from {hub.endpoint} was interrupted ({type(err).__name__})",
            "run the same command again: it resumes where it stopped",
        ),
    ]
    for types, message, hint in table:
        if isinstance(err, types):
            return DownloadError(message, hint)
    if isinstance(err, e.HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        if status in (401, 403):
            return DownloadError(
                f"the hub refused access to {repo} (HTTP {status})",
                f"accept the licence on {hub.endpoint}/{repo} if it is gated, then {token_hint}",
            )
        return DownloadError(
            f"the hub answered HTTP {status} for {repo}@{rev}",
            "try again later; partial files are kept and the next run resumes",
        )
    if is_disk_full(err):
        return DownloadError(
            f"disk full while downloading {repo} into {where or hub.cache_dir}: {err.strerror}",
            "free space (or use --dir on a bigger disk) and run again: partial files are kept and resumed",
        )
    return None
