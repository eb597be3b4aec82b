"""llama.cpp's weights: one quant's GGUF shards from the hub (only those), or a GGUF converted locally.

- **From the hub** (model.gguf.repo): the hub lists the repo once; only the files of the chosen quant's
  pattern are fetched, their sizes from that listing (before_download gets the total before the first
  byte, so the plan is made again with it), resumable, checked at their listed sizes, through the same
  download code as safetensors checkpoints (weights/hub.py).
- **Converted** (no model.gguf.repo: tiny-v4 and other generated or local checkpoints): llama.cpp's
  own convert_hf_to_gguf.py, from the source tree scripts/build_llama_server.sh keeps beside the binary,
  run once (weights/gguf_convert.py); the result is kept next to the checkpoint.
llama-server is given the first shard (`-00001-of-N`); it finds the others itself.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dsv4serve.errors import DownloadError
from dsv4serve.weights import hub as hd
from dsv4serve.weights.fetch import DownloadResult, Progress, download_listing, hub_settings, offline

CONVERTED = "model.gguf"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def converted_path(profile) -> Path:
    """Where the converted GGUF of a profile's own checkpoint is (or will be)."""
    from dsv4serve.engines.llamacpp.binary import PIN

    model = profile.model
    if model.generate:
        from dsv4serve.weights.generated import checkpoint_dir

        return checkpoint_dir(model.generate) / f"gguf-{PIN}" / CONVERTED
    source = str(Path(model.path or profile.name).expanduser().resolve())
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsv4serve" / "gguf" / f"{Path(source).name}-{key}" / CONVERTED


def first_shard(paths: list[str]) -> str:
    """The file llama-server is given: the one GGUF, or shard 00001 of a split one."""
    ggufs = sorted(p for p in paths if p.endswith(".gguf"))
    firsts = [p for p in ggufs if (m := _SHARD.search(p)) and m.group(1) == "00001"]
    return (firsts or ggufs)[0]


def fetch_gguf(
    profile,
    quant: str,
    pattern: str,
    *,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    allow_download: bool = True,
    progress: bool | Progress = True,
    before_download: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Make the quant's GGUF local; DownloadResult.path is the file llama-server loads."""
    from dsv4serve.planning.llamacpp_quants import hub_gguf

    gguf = hub_gguf(profile)
    if gguf is None:
        return convert_checkpoint(profile, allow_download=allow_download, progress=progress)
    repo, rev = gguf.repo, revision or gguf.revision or "main"
    dest = Path(local_dir).expanduser().resolve() if local_dir is not None else None
    hub = hub_settings()
    if offline() or not allow_download:
        return _from_cache(hub, repo, rev, dest, pattern, quant, allow_download)
    sink = progress if not isinstance(progress, bool) else None
    if progress is True:
        from dsv4serve.weights.fetch import _rich_progress

        sink = _rich_progress()
    try:
        return _from_hub(hub, repo, rev, dest, pattern, quant, sink, before_download)
    except DownloadError:
        raise
    except BaseException as err:
        mapped = hd.hub_error(err, repo, rev, hub)
        if mapped is None:
            raise
        raise mapped from err


def _from_hub(hub, repo, rev, dest, pattern, quant, sink, before_download) -> DownloadResult:
    listing = hd.list_files(hub, repo, rev, [pattern])
    wanted = tuple(f for f in listing.wanted if f.path.endswith(".gguf"))
    if not wanted:
        raise DownloadError(
            f"{repo} (revision {rev}) has no file matching quant {quant}'s pattern {pattern!r}",
            "check model.gguf.quants in the profile against the repo's files on the hub",
        )
    listing = hd.Listing(listing.commit, listing.files, wanted)
    if before_download is not None:  # the listing's real size, before the first byte
        before_download(sum(f.size for f in wanted))
    result = download_listing(hub, repo, rev, dest, listing, sink)
    short = [f.path for f in wanted if not _at_size(result.path / f.path, f.size)]
    if short:
        raise DownloadError(
            f"{repo}: {len(short)} GGUF file(s) of {quant} missing or short: {', '.join(short[:4])}",
            "run `dsv4serve download PROFILE --engine llama.cpp` again: it fetches only what is missing",
        )
    return dataclasses.replace(result, path=result.path / first_shard([f.path for f in wanted]))


def _from_cache(hub, repo, rev, dest, pattern, quant, allow_download) -> DownloadResult:
    """Offline or --no-download: the quant's files must be complete on disk (sizes from the listing)."""
    why = "HF_HUB_OFFLINE is set" if allow_download else "downloads are turned off (--no-download)"
    hint = f"run `dsv4serve download PROFILE --engine llama.cpp --quant {quant}` with network access"
    storage = hd.storage_folder(hub, repo)
    if dest is not None:
        root, trees = dest, sorted((dest / ".cache" / "huggingface" / "trees").glob("*.json"))
    else:
        ref = storage / "refs" / rev
        commit = (
            rev if re.fullmatch(r"[0-9a-f]{40}", rev) else (ref.read_text().strip() if ref.is_file() else "")
        )
        root = storage / "snapshots" / commit
        trees = [storage / "trees" / f"{commit}.json"] if commit else []
    if not root.is_dir():
        raise DownloadError(f"{repo} (revision {rev}) is not in the cache {hub.cache_dir} and {why}", hint)
    sizes = _listed(trees[-1]) if trees and trees[-1].is_file() else {}
    wanted = {n: s for n, s in sizes.items() if fnmatch.fnmatch(n, pattern)} or {
        str(p.relative_to(root)): None
        for p in root.rglob("*.gguf")
        if fnmatch.fnmatch(str(p.relative_to(root)), pattern)
    }
    short = sorted(n for n, size in wanted.items() if not _at_size(root / n, size))
    if not wanted or short:
        raise DownloadError(f"{repo}: the GGUF files of {quant} are not complete on disk and {why}", hint)
    return DownloadResult(path=root / first_shard(list(wanted)), source="cache", repo=repo, revision=rev)


def _listed(tree: Path) -> dict[str, int | None]:
    try:
        return {n: int(e["size"]) for n, e in json.loads(tree.read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _at_size(path: Path, size: int | None) -> bool:
    return path.is_file() and (size is None or path.stat().st_size == size)


def convert_checkpoint(
    profile, *, allow_download: bool = True, progress: bool | Progress = True
) -> DownloadResult:
    """The profile's own checkpoint (generated or local) as a GGUF, converted once by llama.cpp's
    converter."""
    from dsv4serve.engines.llamacpp.binary import BUILD_HINT, converter_dir
    from dsv4serve.errors import LaunchError
    from dsv4serve.weights.fetch import download_weights

    out = converted_path(profile)
    if out.is_file() and (out.parent / "done").is_file():
        return DownloadResult(path=out, source="generate")
    if profile.model.repo:
        raise DownloadError(
            f"profile {profile.name} names no GGUF (model.gguf) and its checkpoint is a hub repo",
            "add model.gguf with a GGUF repo and its quants, or use --engine vllm",
        )
    source = download_weights(profile, allow_download=allow_download, progress=progress).path
    src = converter_dir()
    if src is None:
        raise LaunchError(
            f"converting {profile.name}'s checkpoint to GGUF needs llama.cpp's converter, which is not built",
            BUILD_HINT,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".gguf.tmp")
    log = out.with_suffix(".convert.log")
    argv = [sys.executable, "-m", "dsv4serve.weights.gguf_convert", str(src), str(source), str(tmp)]
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, check=False, timeout=1800)
    if done.returncode != 0 or not tmp.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise DownloadError(
            f"llama.cpp's converter failed on {source} (exit {done.returncode}): {' | '.join(tail)}",
            f"see {log}",
        )
    os.replace(tmp, out)
    (out.parent / "done").write_text(str(source) + "\n", encoding="utf-8")
    return DownloadResult(path=out, source="generate")
