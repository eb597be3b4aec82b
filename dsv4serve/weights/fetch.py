"""Make a profile's weights local: hub snapshot (checked, resumable), local path, or generated checkpoint.

The only module (with its helper hub_download.py) that imports huggingface_hub. It never prints: the
progress bar is drawn by a `Progress` sink the caller chooses (a Rich bar on a terminal by default).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dsv4serve.errors import DownloadError
from dsv4serve.profiles.types import Profile
from dsv4serve.weights import hub as hd

INDEX = "model.safetensors.index.json"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class Progress(Protocol):
    """Receives byte counts while files download (the CLI's Rich bar, or a test's counter)."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class DownloadResult:
    path: Path  # the directory vLLM loads
    source: str  # "hub", "cache" (offline / no download), "path", "generate"
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: int = 0
    total_bytes: int = 0
    downloaded_bytes: int = 0  # bytes received in this run
    reused_bytes: int = 0  # complete files and partial downloads that were already there


def fetch_weights(
    profile: Profile,
    *,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    allow_download: bool = True,
    progress: bool | Progress = True,
    before_download: Callable[[int], None] | None = None,
) -> Path:
    """Make the profile's weights local and complete; return the directory vLLM should load.
    before_download(bytes of the *.safetensors files) runs once the hub listed them, before any byte
    is fetched (it may raise to stop the download: a plan that does not fit with the real sizes)."""
    return download_weights(
        profile,
        revision=revision,
        local_dir=local_dir,
        allow_download=allow_download,
        progress=progress,
        before_download=before_download,
    ).path


def download_weights(
    profile: Profile,
    *,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    allow_download: bool = True,
    progress: bool | Progress = True,
    before_download: Callable[[int], None] | None = None,
) -> DownloadResult:
    """fetch_weights with the details the `download` command reports."""
    model = profile.model
    if model.path:
        path = Path(model.path).expanduser()
        if not path.is_dir():
            raise DownloadError(
                f"model.path {path} of profile {profile.name} is not a directory",
                "point model.path at a checkpoint directory (config.json + *.safetensors)",
            )
        ensure_complete(path, model.allow_patterns)
        return DownloadResult(path=path, source="path")
    if model.generate:
        from dsv4serve.weights.generated import ensure_checkpoint  # tiny or a V4 shape, imported when needed

        path = ensure_checkpoint(model.generate)
        return DownloadResult(path=path, source="generate")
    if not model.repo:
        raise DownloadError(
            f"profile {profile.name} names no weights", "set model.repo, model.path or model.generate"
        )
    rev = revision or model.revision or "main"
    dest = Path(local_dir).expanduser().resolve() if local_dir is not None else None
    hub = hub_settings()
    if offline() or not allow_download:
        return _from_cache(hub, model.repo, rev, dest, model.allow_patterns, allow_download)
    sink = progress if not isinstance(progress, bool) else (_rich_progress() if progress else None)
    try:
        return _from_hub(hub, model.repo, rev, dest, model.allow_patterns, sink, before_download)
    except DownloadError:
        raise
    except BaseException as err:  # the one table from hub/OS errors to messages
        mapped = hd.hub_error(err, model.repo, rev, hub)
        if mapped is None:
            raise
        raise mapped from err


def _from_hub(
    hub: hd.Hub,
    repo: str,
    rev: str,
    dest: Path | None,
    patterns: Iterable[str],
    sink: Progress | None,
    before_download: Callable[[int], None] | None = None,
) -> DownloadResult:
    listing = hd.list_files(hub, repo, rev, patterns)
    if before_download is not None:  # the real sizes, before the first byte
        before_download(sum(f.size for f in listing.wanted if f.path.endswith(".safetensors")))
    result = download_listing(hub, repo, rev, dest, listing, sink)
    ensure_complete(result.path, patterns)
    return result


def download_listing(
    hub: hd.Hub, repo: str, rev: str, dest: Path | None, listing: hd.Listing, sink: Progress | None
) -> DownloadResult:
    """The listing's wanted files into the hub cache (or dest): disk check first, resumable, recorded."""
    target = hd.Target(hub, repo, listing.commit, dest)
    budget = hd.check_disk(target, listing.wanted)  # before the first byte
    if sink is not None and budget.needed:
        sink.start(budget.total, budget.cached + budget.partial)
    received = 0
    try:
        received = hd.download_all(target, listing.wanted, sink.advance if sink else _ignore)
    except OSError as err:
        if hd.is_disk_full(err):
            raise hd.hub_error(err, repo, rev, hub, where=target.root) from err
        raise
    finally:
        if sink is not None and budget.needed:
            sink.finish()
    target.record(listing, rev)
    return DownloadResult(
        path=target.root,
        source="hub",
        repo=repo,
        revision=rev,
        commit=listing.commit,
        files=len(listing.wanted),
        total_bytes=budget.total,
        downloaded_bytes=received,
        reused_bytes=budget.cached + budget.partial,
    )


def _ignore(_n: int) -> None:
    pass


def _from_cache(
    hub: hd.Hub, repo: str, rev: str, dest: Path | None, patterns: Iterable[str], allow_download: bool
) -> DownloadResult:
    """Offline or --no-download: the weights must already be complete on disk."""
    why = "HF_HUB_OFFLINE is set" if allow_download else "downloads are turned off (--no-download)"
    hint = (
        "unset HF_HUB_OFFLINE and run `dsv4serve download` with network access"
        if allow_download
        else f"run `dsv4serve download` first (repo {repo}, revision {rev})"
    )
    storage = hd.storage_folder(hub, repo)
    if dest is not None:
        root = dest
    else:
        commit = rev if COMMIT_RE.match(rev) else None
        ref = storage / "refs" / rev
        if commit is None and ref.is_file():
            commit = ref.read_text().strip()
        if commit is None or not (storage / "snapshots" / commit).is_dir():
            raise DownloadError(
                f"{repo} (revision {rev}) is not in the cache {hub.cache_dir} and {why}", hint
            )
        root = storage / "snapshots" / commit
    if not root.is_dir():
        raise DownloadError(f"{root} does not exist and {why}", hint)
    missing = missing_files(root, patterns)
    if missing:
        raise DownloadError(f"{_missing_message(repo, missing)}, and {why}", hint)
    tree = _tree_file(root)  # trees/<commit>.json, written when the files were downloaded
    commit = root.name if dest is None else (tree.stem if tree is not None else None)
    return DownloadResult(path=root, source="cache", repo=repo, revision=rev, commit=commit)


# -- completeness ------------------------------------------------------------------------------


def missing_files(path: str | Path, allow_patterns: Iterable[str] = ()) -> list[str]:
    """Files a complete checkpoint at PATH needs but lacks or has cut short, sorted.

    Required: config.json, every shard named in model.safetensors.index.json (or the *.safetensors
    present), and, when the hub's file list recorded at download time is there (trees/<commit>.json),
    every listed file matching ALLOW_PATTERNS. Expected sizes come from that list, else from each
    shard's own safetensors header (a truncated shard is reported as missing).
    """
    root = Path(path)
    sizes = _recorded_sizes(root)
    need: dict[str, int | None] = {"config.json": sizes.get("config.json")}
    patterns = list(allow_patterns)
    for name, size in sizes.items():
        if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
            need[name] = size
    index = root / INDEX
    if index.is_file():
        need[INDEX] = sizes.get(INDEX)
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return sorted({*need, INDEX} - {n for n in need if n != INDEX and _ok(root / n, need[n])})
        for shard in shards:
            need.setdefault(shard, sizes.get(shard))
    elif not any(n.endswith(".safetensors") for n in need):
        present = sorted(p.name for p in root.glob("*.safetensors"))
        if not present:
            return sorted({n for n in need if not _ok(root / n, need[n])} | {"*.safetensors"})
        for name in present:
            need[name] = None
    return sorted(name for name, size in need.items() if not _ok(root / name, size))


def ensure_complete(path: str | Path, allow_patterns: Iterable[str] = ()) -> None:
    """Raise DownloadError listing the missing files unless the checkpoint at PATH is complete."""
    missing = missing_files(path, allow_patterns)
    if missing:
        raise DownloadError(
            f"{_missing_message(str(path), missing)}",
            "run `dsv4serve download PROFILE` again: it fetches only what is missing",
        )


def _missing_message(what: str, missing: list[str]) -> str:
    shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
    return f"weights of {what} are incomplete: {len(missing)} file(s) missing or short: {shown}"


def _ok(file: Path, size: int | None) -> bool:
    if not file.is_file():  # follows the snapshot symlink: a dangling one is missing
        return False
    actual = file.stat().st_size
    if size is not None:
        return actual == size
    if file.suffix == ".safetensors":
        expected = _safetensors_size(file)
        return expected is not None and actual >= expected
    return True


def _safetensors_size(file: Path) -> int | None:
    """Size a safetensors file must have: 8 + header length + end of the last tensor."""
    try:
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _recorded_sizes(root: Path) -> dict[str, int]:
    """Sizes from the hub's tree listing cached next to a snapshot or inside a --dir download."""
    tree = _tree_file(root)
    if tree is None:
        return {}
    try:
        files = json.loads(tree.read_text())["files"]
        return {name: int(info["size"]) for name, info in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _tree_file(root: Path) -> Path | None:
    """The hub's file list for the snapshot ROOT, or the newest one recorded in a --dir download."""
    if root.parent.name == "snapshots":
        return root.parent.parent / "trees" / f"{root.name}.json"
    found = (root / ".cache" / "huggingface" / "trees").glob("*.json")
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


# -- environment -------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_settings() -> hd.Hub:
    """HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE / HF_HOME as they are now (not at import time)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
        )
        cache = os.path.join(home, "hub")
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or get_token()
    return hd.Hub(endpoint=endpoint, token=token or None, cache_dir=Path(cache).expanduser().resolve())


def _rich_progress() -> Progress | None:
    if not sys.stderr.isatty():
        return None
    return RichProgress()


class RichProgress:
    """A Rich bar on stderr: bytes, rate, time left."""

    def __init__(self) -> None:
        self._bar = None
        self._task = None

    def start(self, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("downloading", total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
