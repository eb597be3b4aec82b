"""Secrets out of sight: masked in everything dsv4serve shows, private in the files it writes.

A secret is the value of an environment variable whose name contains TOKEN, KEY, SECRET or PASSWORD
(any case: HF_TOKEN, VLLM_API_KEY, db_password), or of a vLLM flag that carries one (--api-key). vLLM
still gets the real value: only what is printed (plan, shell line, up --dry-run, --json, profiles show,
the command and log lines on the terminal, errors) is masked.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from dsv4serve.errors import LaunchError

MASK = "***"
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
# vLLM serve flags whose value is a credential (an API key clients must send, a hub token).
SECRET_FLAGS = ("--api-key", "--hf-token")
# Values shorter than this are not masked inside free text (a "1" would blank every digit).
_MIN_TEXT_SECRET = 4
_registered: set[str] = set()


def is_secret(name: str) -> bool:
    """Whether an environment variable's value is a secret, by its name."""
    return bool(_SECRET_NAME.search(name))


def masked_env(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, MASK if is_secret(name) and value else value) for name, value in pairs)


def _flag(arg: str) -> str:
    """The long flag an argument names, in vLLM's spelling (it reads --api_key as --api-key)."""
    return arg.split("=", 1)[0].replace("_", "-") if arg.startswith("--") else ""


def masked_args(args: Iterable[str]) -> tuple[str, ...]:
    """vLLM arguments with credential values masked: `--api-key X` and `--api-key=X`."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        flag = _flag(arg)
        if hide_next and not flag:
            out.append(MASK)
        elif flag in SECRET_FLAGS and "=" in arg:
            out.append(f"{arg.split('=', 1)[0]}={MASK}")
        else:
            out.append(arg)
        hide_next = flag in SECRET_FLAGS and "=" not in arg
    return tuple(out)


def secret_values(env: Iterable[tuple[str, str]], args: Iterable[str]) -> set[str]:
    """The secret values among an environment and an argv (to mask them in free text, e.g. logs)."""
    values = {value for name, value in env if is_secret(name) and value}
    args = list(args)
    for i, arg in enumerate(args):
        flag = _flag(arg)
        if flag in SECRET_FLAGS:
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            values.add(value)
    return {v for v in values if v}


def register(values: Iterable[str]) -> None:
    """Remember secret values for mask_text (the process prints nothing that holds them)."""
    _registered.update(v for v in values if len(v) >= _MIN_TEXT_SECRET)


def mask_text(text: str) -> str:
    """Free text (a log line, an error with vLLM's log tail) with every registered secret masked."""
    for value in sorted(_registered, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def masked_plan(plan: Any) -> Any:
    """A Plan for showing: secret env values and credential flags masked (every node's too)."""
    nodes = tuple(dataclasses.replace(n, env=masked_env(n.env), argv=masked_args(n.argv)) for n in plan.nodes)
    return dataclasses.replace(plan, env=masked_env(plan.env), args=masked_args(plan.args), nodes=nodes)


def masked_profile(data: dict) -> dict:
    """profile_to_dict's output for showing: serve.env secrets and credential extra_args masked."""
    serve = dict(data["serve"])
    serve["env"] = dict(masked_env(serve["env"].items()))
    serve["extra_args"] = list(masked_args(serve["extra_args"]))
    return {**data, "serve": serve}


def open_private_log(path: Path) -> TextIO:
    """A log file only its owner can read (0600) in a directory only its owner can enter (0700): vLLM's
    log holds its full configuration, credentials included."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # mkdir's mode does not apply to a directory that already exists
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left from an earlier run keeps its old mode otherwise
    except OSError as err:
        raise LaunchError(
            f"cannot write vLLM's log {path}: {err.strerror or err}",
            "set XDG_CACHE_HOME to a directory of yours",
        ) from None
    return os.fdopen(fd, "w", encoding="utf-8")
