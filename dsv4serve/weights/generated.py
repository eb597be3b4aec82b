"""Checkpoints dsv4serve writes itself (model.generate): `tiny` (DeepSeek-V3 architecture, tiny.py) and
the DeepSeek-V4 shapes `tiny-v4` and `flash` (v4ckpt/)."""

from __future__ import annotations

from pathlib import Path

from dsv4serve.errors import ProfileError


def checkpoint_dir(name: str, root: Path | None = None) -> Path:
    """Where the generated checkpoint `name` lives in the user cache (whether or not it exists yet), or
    under `root` instead of $XDG_CACHE_HOME/dsv4serve/checkpoints (a container's cache: export)."""
    return _generator(name).checkpoint_dir(name, root)


def ensure_checkpoint(name: str) -> Path:
    """The generated checkpoint `name`, written into the user cache first if it is not there."""
    return Path(_generator(name).ensure_checkpoint(name))


def _generator(name: str):
    from dsv4serve.weights import (
        tiny,  # both light: numpy is imported only to write tensors
        v4ckpt,
    )

    if name in tiny.SPECS:
        return tiny
    if name in v4ckpt.SHAPES:
        return v4ckpt
    raise ProfileError(
        f"unknown generated checkpoint {name!r} (model.generate)",
        f"use one of: {', '.join(sorted([*tiny.SPECS, *v4ckpt.SHAPES]))}",
    )
