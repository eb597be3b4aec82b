"""Write a V4 checkpoint: config, tokenizer and shards, the shards in parallel processes, atomically.

Each shard is streamed (header, then tensor after tensor) by its own process: the flash shape's 46
shards never sit in memory. The directory appears under its final name only once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dsv4serve.errors import DownloadError, UsageError
from dsv4serve.weights.v4ckpt import layout, tokenizer
from dsv4serve.weights.v4ckpt.spec import V4Spec, get_spec, model_config

GENERATOR_VERSION = 3  # bump when the bytes written for a given spec change (2: templates, 3: merges)
MARKER = "dsv4serve-v4.json"  # written last: its presence means the directory is complete


@dataclass(frozen=True)
class Written:
    path: Path
    shards: int
    weights_bytes: int  # all *.safetensors files
    total_bytes: int  # every file in the directory
    reused: bool = False  # it was already there, complete (same spec hash): nothing written


def spec_hash(spec: V4Spec) -> str:
    """Short stable hash of the spec and the generator version (names the cache directory)."""
    blob = json.dumps({"v": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def checkpoint_dir(name: str, root: Path | None = None) -> Path:
    """Where ensure_checkpoint(name) keeps it: next to the tiny checkpoint, named by the spec hash."""
    from dsv4serve.weights.tiny import cache_root

    return (root or cache_root()) / f"{name}-{spec_hash(get_spec(name))}"


def ensure_checkpoint(name: str, root: Path | None = None, jobs: int = 1) -> Path:
    """The generated checkpoint `name` from the cache, written first if missing."""
    final = checkpoint_dir(name, root)
    if (final / MARKER).is_file():
        return final
    make(get_spec(name), final, jobs=jobs)
    return final


def make(
    spec: V4Spec, out: Path, jobs: int = 1, on_shard: Callable[[str, int, int], None] | None = None
) -> Written:
    """Write spec's checkpoint to OUT (absent or empty) through a temporary sibling and one rename."""
    out = Path(out)
    if (out / MARKER).is_file() and _marker_hash(out) == spec_hash(spec):
        return _summary(out, reused=True)  # same spec, same bytes: already there
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not empty", "name a new directory, or remove this one")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        raise DownloadError(
            f"cannot write under {out.parent}: {err.strerror or err}", "pick a writable directory"
        ) from err
    try:
        write_checkpoint(spec, tmp, jobs=jobs, on_shard=on_shard)
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename needs it gone
        os.rename(tmp, out)  # the commit point
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (out / MARKER).is_file() and _marker_hash(out) == spec_hash(spec):
            return _summary(out, reused=True)  # another process won the race: same bytes
        raise DownloadError(
            f"cannot write the {spec.name} checkpoint to {out}: {err.strerror or err}",
            "check free space (the flash shape needs 148.7 GiB) and permissions",
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(out)


def write_checkpoint(
    spec: V4Spec, dest: Path, jobs: int = 1, on_shard: Callable[[str, int, int], None] | None = None
) -> None:
    """Write everything into the existing directory dest; shards by up to `jobs` processes."""
    dest = Path(dest)
    vocab = spec.vocab_size
    bos, eos = tokenizer.token_id(vocab, tokenizer.BOS), tokenizer.token_id(vocab, tokenizer.EOS)
    _json(dest / "config.json", model_config(spec, bos, eos))
    generation = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    _json(dest / "generation_config.json", generation)
    _json(dest / "tokenizer.json", tokenizer.tokenizer_json(vocab), indent=None)
    _json(dest / "tokenizer_config.json", tokenizer.tokenizer_config(vocab, spec.max_position_embeddings))
    # DeepSeek-V4's chat template, for the engines that render chats from the checkpoint (Transformers,
    # llama.cpp's converter); vLLM's --tokenizer-mode deepseek_v4 encodes chats itself.
    (dest / tokenizer.CHAT_TEMPLATE).write_text(tokenizer.chat_template(), encoding="utf-8")
    plan = layout.shards(spec)
    _json(dest / "model.safetensors.index.json", layout.index_json(plan))
    jobs = max(1, min(jobs, len(plan)))
    if jobs == 1:
        for k, shard in enumerate(plan, start=1):
            _write_shard(shard, spec.seed, dest / shard.file)
            if on_shard:
                on_shard(shard.file, k, len(plan))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork: the workers need no re-import; each gets only its shard's plan.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_write_shard, s, spec.seed, dest / s.file) for s in plan]
            for k, future in enumerate(as_completed(futures), start=1):
                name = future.result()
                if on_shard:
                    on_shard(name, k, len(plan))
    _json(
        dest / MARKER, {"generator_version": GENERATOR_VERSION, "hash": spec_hash(spec), "spec": asdict(spec)}
    )


def _write_shard(shard: layout.Shard, seed: int, path: Path) -> str:
    from dsv4serve.weights.v4ckpt.fill import Filler

    filler = Filler(seed)
    with open(path, "wb", buffering=8 << 20) as out:
        out.write(shard.header)
        for tensor in shard.tensors:
            filler.write(out, tensor)
        written = out.tell()
    if written != shard.file_bytes:  # a fill that wrote the wrong length would corrupt every offset
        raise OSError(f"{path.name}: wrote {written} bytes, planned {shard.file_bytes}")
    return path.name


def _summary(path: Path, reused: bool = False) -> Written:
    files = [p for p in path.iterdir() if p.is_file()]
    shards = [p for p in files if p.suffix == ".safetensors"]
    return Written(
        path=path,
        shards=len(shards),
        weights_bytes=sum(p.stat().st_size for p in shards),
        total_bytes=sum(p.stat().st_size for p in files),
        reused=reused,
    )


def _marker_hash(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text()).get("hash")
    except (OSError, ValueError, AttributeError):
        return None


def _json(path: Path, data: dict, indent: int | None = 2) -> None:
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
