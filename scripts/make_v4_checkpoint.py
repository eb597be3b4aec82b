"""Write a random-weight DeepSeek-V4 checkpoint (DeepseekV4ForCausalLM, FP8 + MXFP4 layout).

    python scripts/make_v4_checkpoint.py --shape tiny-v4 OUT_DIR            # 67.7 MiB, 6 shards (MTP), ~1 s
    python scripts/make_v4_checkpoint.py --shape flash /dev/shm/flash --jobs 46   # 148.7 GiB, 46 shards
    python scripts/make_v4_checkpoint.py --shape flash --layers 12 /data/flash-12l  # 45.3 GiB, one H200
    python scripts/make_v4_checkpoint.py --shape pro --layers 2 /data/pro-2l        # 42.3 GiB

--layers N keeps a true shape's (flash, pro) first N layers with their real dims, compress ratios and
hash routing, plus the MTP layer, and writes the matching profile next to OUT_DIR (OUT_DIR.yaml, or
--profile FILE): `dsv4serve up OUT_DIR.yaml --gpus 1` then serves it with its exact figures.

OUT_DIR must not exist (or be empty); it appears only once complete. Offline and deterministic: the
same shape always gives the same bytes. --plan prints the sizes without writing anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsv4serve.errors import DsvError  # noqa: E402
from dsv4serve.weights import v4ckpt  # noqa: E402 - after making the source tree importable
from dsv4serve.weights.v4ckpt import layout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to create")
    parser.add_argument("--shape", required=True, choices=sorted(v4ckpt.SHAPES))
    parser.add_argument("--jobs", type=int, default=0, help="shard-writing processes (default: one per CPU)")
    parser.add_argument("--plan", action="store_true", help="print the planned sizes; write nothing")
    parser.add_argument("--layers", type=int, help="keep the first N layers of flash or pro (a layer cut)")
    parser.add_argument("--profile", type=Path, help="where the cut's profile goes (default: OUT_DIR.yaml)")
    args = parser.parse_args(argv)
    spec = v4ckpt.get_spec(args.shape)
    if args.layers is not None:
        try:
            spec = v4ckpt.cut(spec, args.layers)
        except DsvError as err:
            return _fail(err)
    plan = layout.shards(spec)
    planned = layout.weights_bytes(plan)
    if args.plan:
        print(
            f"{spec.name}: {len(plan)} shards, {planned:,} bytes of safetensors ({planned / 2**30:.2f} GiB)"
        )
        return 0
    jobs = args.jobs or min(len(plan), os.cpu_count() or 1)
    t0 = time.monotonic()

    def progress(name: str, done: int, total: int) -> None:
        print(f"  [{done}/{total}] {name}  {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    try:
        written = v4ckpt.make(spec, args.out_dir, jobs=jobs, on_shard=progress if len(plan) > 8 else None)
    except DsvError as err:
        return _fail(err)
    seconds = time.monotonic() - t0
    if written.reused:
        print(
            f"{written.path}: {spec.name} already complete ({written.weights_bytes:,} bytes of safetensors)"
        )
        return 0
    rate = written.weights_bytes / seconds / 2**30 if seconds > 0 else 0.0
    print(
        f"{written.path}: {spec.name}, {written.shards} shards, "
        f"{written.weights_bytes:,} bytes of safetensors ({written.weights_bytes / 2**30:.2f} GiB), "
        f"{written.total_bytes:,} bytes in all; "
        f"{seconds:.1f} s with {jobs} jobs ({rate:.2f} GiB/s)"
    )
    if spec.profile:  # a flash- or pro-shaped checkpoint needs a profile with its path and exact figures
        from dsv4serve.weights.v4ckpt.profile import write_profile

        out = write_profile(spec, written.path, args.profile or written.path.with_suffix(".yaml"))
        print(f"profile: {out} (extends {spec.profile}); serve it: dsv4serve up {out} --gpus 1")
    return 0


def _fail(err: DsvError) -> int:
    print(f"error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
