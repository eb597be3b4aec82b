"""Write the tiny random-weight DeepSeek-V3-architecture checkpoint (the tiny profile's weights).

    python scripts/make_tiny.py DIR        # write it into DIR (created if missing)
    python scripts/make_tiny.py            # into the user cache, where `dsv4serve up tiny` looks

Offline, about a second, deterministic: the same spec always gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsv4serve.weights import tiny  # noqa: E402 - after making the source tree importable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", help="directory to write (default: the user cache)")
    parser.add_argument("--name", default="tiny", choices=sorted(tiny.SPECS), help="which spec")
    args = parser.parse_args(argv)
    if args.dest:
        path = tiny.write_checkpoint(tiny.SPECS[args.name], Path(args.dest))
    else:
        path = tiny.ensure_checkpoint(args.name)
    total, active = tiny.param_counts(tiny.SPECS[args.name])
    size = (path / "model.safetensors").stat().st_size
    print(f"{path}  ({total:,} params, {active:,} active, model.safetensors {size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
