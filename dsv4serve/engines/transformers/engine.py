"""`transformers serve` as an engine (engines.base.Engine): the reference engine and CI's CPU path.

Transformers 5.8+ has DeepseekV4 (shared/facts/engines-v4.md). Without a GPU it dequantizes the FP8 and
MXFP4 weights to bf16: a small model (tiny-v4, a layer-cut shape) serves on a CPU, the full Flash
would need ~570 GB of RAM. The server pins the model it was started with: a request must name that
model exactly as given (its path), so the served model name is the path. It has no API key.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsv4serve.engines.names import PROGRAMS
from dsv4serve.engines.startup import decided_problem, first_hint, phase_reader, refuse_decided

MIN_VERSION = "5.8.0"  # DeepseekV4 first released in Transformers 5.8.0 (PR #45643)
# What `transformers serve` needs besides transformers itself (its serving extra, and accelerate for
# the device map it loads with).
NEEDS = ("torch", "accelerate", "fastapi", "uvicorn")
PHASES = (
    ("loading weights", re.compile(r"\[transformers\] Loading |loading weights file|Loading weights")),
    ("API server", re.compile(r"Application startup complete|Uvicorn running on")),
)
HINTS = (
    (re.compile(r"Address already in use|Errno 98"), "the port is taken: pick another with --port"),
    (
        re.compile(r"requires `accelerate`|No module named '(?:accelerate|fastapi|uvicorn)'"),
        "install what `transformers serve` needs: pip install 'transformers[serving]' accelerate",
    ),
    (
        re.compile(r"out of memory|Cannot allocate memory|MemoryError|Killed", re.I),
        "not enough memory for bf16 weights: see `dsv4serve plan PROFILE --engine transformers`",
    ),
    (
        re.compile(r"does not recognize this architecture|KeyError: 'deepseek_v4'"),
        f"this Transformers has no DeepSeek-V4: upgrade to >= {MIN_VERSION}",
    ),
)
DEFAULT_HINT = (
    "read the Transformers log above; `dsv4serve plan PROFILE --engine transformers` shows the plan"
)
# Flags the plan decides: after `--` they are refused with the option to use instead.
DECIDED = {
    "--host": "--host",
    "--port": "--port",
    "--device": "--device",
    "--dtype": "the plan (bf16 after dequantization)",
    "--continuous-batching": "nothing: dsv4serve plans one request at a time",
}


def transformers_args(
    model: str, host: str, port: int, device: str, thinking: bool | None, extra: Sequence[str]
) -> tuple[str, ...]:
    """`transformers serve`'s args: the model it pins, where it listens, the device, bf16 weights."""
    args = [model, "--host", host, "--port", str(port), "--device", device, "--dtype", "bfloat16"]
    args += ["--log-level", "info"]
    if thinking is not None:  # DeepSeek-V4's template reads `thinking` (off unless asked)
        args += ["--chat-template-kwargs", json.dumps({"thinking": thinking})]
    return (*args, *extra)


@dataclass(frozen=True)
class TransformersEngine:
    name: str = "transformers"
    main: tuple[str, ...] = ("-m", "transformers.cli.transformers", "serve")
    program: tuple[str, ...] = PROGRAMS["transformers"]
    api_key_env: str | None = None  # `transformers serve` takes no API key

    def launch_argv(self, args: Sequence[str]) -> tuple[str, ...]:
        return (sys.executable, *self.main, *args)

    def serve_args(self, profile: Any, model: str, overrides: Any, tp: int, max_len: int, graphs: bool, util):
        device = "cpu" if getattr(overrides, "device", None) in (None, "cpu") else "cuda"
        return transformers_args(model, overrides.host, overrides.port, device, None, overrides.extra_args)

    def command(self, args: Sequence[str]) -> tuple[str, ...]:
        return (*self.program, *args)

    def arg_problem(self, args: tuple[str, ...]):
        return decided_problem(args, DECIDED)

    def settle(self, profile: Any, overrides: Any):
        refuse_decided(tuple(overrides.extra_args), DECIDED, "transformers serve")
        return profile, overrides

    def installed_version(self, paths: Sequence[str] | None = None) -> str | None:
        from dsv4serve.engines.vllm.version import distribution_version

        return distribution_version("transformers", paths)

    def require_version(self, minimum: str | None, installed: str | None, profile: str) -> None:
        """Transformers >= 5.8 (DeepseekV4) with torch, accelerate, FastAPI and Uvicorn beside it."""
        from dsv4serve.engines.vllm.version import distribution_version, parse_version
        from dsv4serve.errors import EXIT_LAUNCH, LaunchError, UsageError

        install = "install it: pip install 'transformers[serving]>=5.8' accelerate torch==2.13.0"
        if installed is None:
            raise LaunchError(
                f"Transformers is not installed in this Python environment; profile {profile} needs "
                f"transformers >= {MIN_VERSION} for --engine transformers",
                install,
                exit_code=EXIT_LAUNCH,
            )
        have = parse_version(installed)
        if have is None or have < parse_version(MIN_VERSION):
            raise UsageError(
                f"Transformers {installed} is installed; DeepSeek-V4 needs transformers >= {MIN_VERSION}",
                f"upgrade it: pip install -U 'transformers>={MIN_VERSION}'",
            )
        missing = [name for name in NEEDS if distribution_version(name) is None]
        if missing:
            raise LaunchError(
                f"`transformers serve` needs {', '.join(missing)}, not installed in this environment",
                install,
                exit_code=EXIT_LAUNCH,
            )

    def log_reader(self):
        return phase_reader(PHASES)

    def exit_hint(self, log_tail: str) -> str:
        return first_hint(log_tail, HINTS, DEFAULT_HINT)

    def prepare(self, env: Sequence[tuple[str, str]]) -> None:
        """Its hub cache must exist (else /v1/models answers 500), even offline."""
        import os

        cache = dict(env).get("HF_HUB_CACHE")
        if cache:
            os.makedirs(cache, mode=0o700, exist_ok=True)


ENGINE = TransformersEngine()
