"""llama.cpp's `llama-server` as an engine (engines.base.Engine), on one GGUF file (its first shard).

The plan decides the context (`-c`), the layers on GPUs (`-ngl`), the layers whose experts stay in RAM
(`--n-cpu-moe`), one slot (`-np 1`, so the whole context is one sequence's), f16 K and V caches (the
same type for both: `deepseek4` needs it, and a quantized K cache gave garbage: llama.cpp issues 25382,
26423), the chat template of the GGUF (`--jinja`) and DeepSeek's reasoning format (the thinking goes to
`reasoning_content`). The API key goes in LLAMA_API_KEY, never on the argv.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsv4serve.engines.names import PROGRAMS
from dsv4serve.engines.startup import decided_problem, first_hint, phase_reader, refuse_decided

PHASES = (  # llama-server 0.5's lines at -lv 4
    ("loading weights", re.compile(r"load_model: loading model|llama_model_loader: |load_tensors:")),
    ("KV cache allocation", re.compile(r"llama_context: |llama_kv_cache|creating DSV4")),
    ("kernel warmup", re.compile(r"sched_reserve:|warming up the model")),
    ("API server", re.compile(r"llama_server: listening on|llama_server: model loaded")),
)
HINTS = (
    (
        re.compile(r"unknown model architecture: 'deepseek4'"),
        "this llama-server predates DeepSeek-V4 (b9840)",
    ),
    (
        re.compile(r"couldn't bind|Address already in use|bind\(\) failed"),
        "the port is taken: pick another with --port",
    ),
    (
        re.compile(r"failed to allocate|out of memory|cudaMalloc failed|unable to allocate", re.I),
        "not enough memory: lower --max-model-len, pick a smaller --quant, or see `dsv4serve plan`",
    ),
    (
        re.compile(r"error loading model|failed to load model|failed to open|invalid magic", re.I),
        "the GGUF looks incomplete or corrupt: run `dsv4serve download PROFILE --engine llama.cpp` again",
    ),
    (re.compile(r"error: invalid argument|unknown argument"), "llama-server rejected an argument after `--`"),
)
DEFAULT_HINT = "read llama-server's log above; `dsv4serve plan PROFILE --engine llama.cpp` shows the plan"
# Flags the plan decides, by every spelling: after `--` they are refused with what to use instead.
DECIDED = {
    ("-m", "--model", "-hf", "-hfr", "--hf-repo", "-mu", "--model-url"): "the profile's GGUF (--quant)",
    ("-c", "--ctx-size"): "--max-model-len",
    ("-ngl", "--gpu-layers", "--n-gpu-layers"): "the plan (it computes the offload)",
    ("-ncmoe", "--n-cpu-moe", "-cmoe", "--cpu-moe"): "the plan (it computes the offload)",
    ("-np", "--parallel"): "the plan (one slot holds the whole context)",
    ("-ctk", "--cache-type-k", "-ctv", "--cache-type-v"): "nothing: DeepSeek-V4 needs equal f16 K and V",
    ("--host",): "--host",
    ("--port",): "--port",
    ("-a", "--alias"): "serve.served_model_name",
    ("--api-key", "--api-key-file"): "--api-key-file (dsv4serve passes it in LLAMA_API_KEY)",
    ("-rea", "--reasoning"): "--thinking / --no-thinking",
}
_DECIDED = {flag: use for flags, use in DECIDED.items() for flag in flags}


def llama_args(
    model_file: str,
    alias: str,
    host: str,
    port: int,
    ctx: int,
    gpu_layers: int,
    cpu_moe_layers: int,
    thinking: bool | None,
    threads: int = 0,
    extra: Sequence[str] = (),
) -> tuple[str, ...]:
    """llama-server's args: the GGUF, the name, where it listens, the planned context and offload."""
    args = ["-m", model_file, "-a", alias, "--host", host, "--port", str(port), "-c", str(ctx)]
    args += ["-ngl", str(gpu_layers)]
    if cpu_moe_layers:
        args += ["--n-cpu-moe", str(cpu_moe_layers)]
    args += ["-np", "1", "-ctk", "f16", "-ctv", "f16", "--jinja", "--reasoning-format", "deepseek"]
    # No prompt cache in RAM (its default may take 8 GiB the plan did not give it); the model loader's
    # and the KV cache's own lines in the log (-lv 4: the phases, and the buffers the plan predicts).
    args += ["--cache-ram", "0", "-lv", "4"]
    if thinking is not None:
        args += ["--reasoning", "on" if thinking else "off"]
    if threads:
        args += ["-t", str(threads)]
    args.append("--metrics")
    return (*args, *extra)


@dataclass(frozen=True)
class LlamaCppEngine:
    name: str = "llama.cpp"
    main: tuple[str, ...] = ()  # a binary, not a Python module
    program: tuple[str, ...] = PROGRAMS["llama.cpp"]
    api_key_env: str | None = "LLAMA_API_KEY"

    def launch_argv(self, args: Sequence[str]) -> tuple[str, ...]:
        from dsv4serve.engines.llamacpp.binary import find_server

        return (find_server() or "llama-server", *args)

    def serve_args(self, profile: Any, model: str, overrides: Any, tp: int, max_len: int, graphs: bool, util):
        alias = profile.serve.served_model_name or profile.name
        return llama_args(
            model, alias, overrides.host, overrides.port, max_len, 0, 0, None, 0, overrides.extra_args
        )

    def command(self, args: Sequence[str]) -> tuple[str, ...]:
        return (*self.program, *args)

    def arg_problem(self, args: tuple[str, ...]):
        return decided_problem(args, _DECIDED)

    def settle(self, profile: Any, overrides: Any):
        refuse_decided(tuple(overrides.extra_args), _DECIDED, "llama-server")
        return profile, overrides

    def installed_version(self, paths: Sequence[str] | None = None) -> str | None:
        from dsv4serve.engines.llamacpp.binary import find_server, parse_server_version, server_version

        path = find_server()
        if path is None:
            return None
        text = server_version(path)
        parsed = parse_server_version(text or "")
        return parsed[0] if parsed else "unknown"

    def require_version(self, minimum: str | None, installed: str | None, profile: str) -> None:
        """A llama-server with DeepSeek-V4 (b9840 or later; every 0.x release); none is exit 5."""
        from dsv4serve.engines.llamacpp.binary import BUILD_HINT, MIN_BUILD, parse_server_version
        from dsv4serve.errors import EXIT_LAUNCH, LaunchError, UsageError

        if installed is None:
            raise LaunchError(
                f"llama-server is not installed (not on PATH, not in dsv4serve's cache); profile {profile} "
                "needs it for --engine llama.cpp",
                BUILD_HINT,
                exit_code=EXIT_LAUNCH,
            )
        parsed = parse_server_version(f"version: {installed.lstrip('b')}")
        if parsed is None:
            raise UsageError(
                f"cannot read the version of llama-server ({installed!r}); DeepSeek-V4 needs b{MIN_BUILD}+",
                BUILD_HINT,
            )
        if not parsed[1]:
            raise UsageError(
                f"llama-server {installed} is installed; DeepSeek-V4 needs b{MIN_BUILD} or later", BUILD_HINT
            )

    def log_reader(self):
        return phase_reader(PHASES)

    def exit_hint(self, log_tail: str) -> str:
        return first_hint(log_tail, HINTS, DEFAULT_HINT)

    def prepare(self, env: Sequence[tuple[str, str]]) -> None:
        return None


ENGINE = LlamaCppEngine()
